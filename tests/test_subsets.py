"""--train-fraction: seeded, nested subsets of the training split, recorded with the run."""
import pytest

from datasets.subsets import fraction_subset


def _records(n):
    return [{"img_name": f"i{k}.png", "mask_name": f"m{k}.png"} for k in range(n)]


def test_fractions_are_nested_deterministic_and_in_manifest_order():
    recs = _records(200)
    subsets = {f: fraction_subset(recs, f, seed=3) for f in (0.1, 0.25, 0.5, 1.0)}
    names = {f: [r["img_name"] for r in s] for f, (s, _) in subsets.items()}
    assert [len(v) for v in names.values()] == [20, 50, 100, 200]
    assert set(names[0.1]) < set(names[0.25]) < set(names[0.5]) < set(names[1.0])
    for v in names.values():  # manifest order kept
        assert v == sorted(v, key=lambda n: int(n[1:-4]))
    again, info = fraction_subset(recs, 0.25, seed=3)
    assert [r["img_name"] for r in again] == names[0.25] and info["sha256"] == subsets[0.25][1]["sha256"]
    other, info2 = fraction_subset(recs, 0.25, seed=4)
    assert info2["sha256"] != info["sha256"] and {r["img_name"] for r in other} != set(names[0.25])
    assert info == {"fraction": 0.25, "seed": 3, "n": 50, "of": 200, "sha256": info["sha256"]}
    assert len(fraction_subset(_records(3), 0.1)[0]) == 1      # never empty
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        fraction_subset(recs, 0.0)


def test_a_run_on_a_fraction_trains_on_it_and_records_it(tmp_path):
    from datasets.synthetic import generate
    from vlsm.training import default_args, run_training
    generate(str(tmp_path / "data"), str(tmp_path / "pj"), seed=1, counts={"train": 20, "val": 4, "test": 4})
    final = run_training(default_args(data_root=str(tmp_path / "data"), prompts_root=str(tmp_path / "pj"),
                                      output_dir=str(tmp_path / "runs"), epochs=1, input_size=64, batch_size=4,
                                      device="cpu", workers=0, train_fraction=0.25, no_test=True))
    sub = final["train_subset"]["synthetic"]
    # every image holds 2-3 objects, one record each: a quarter of the records, rounded up
    assert sub["of"] >= 40 and sub["n"] == -(-sub["of"] // 4) and sub["fraction"] == 0.25
