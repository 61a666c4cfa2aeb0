"""The prompt explorer in the browser: one image, many prompts, masks live at the original size (docs/app.md).

    python app.py --checkpoint last                        # the last trained run, http://127.0.0.1:7860
    python app.py --checkpoint runs/kvasir/clipseg/p3/<stamp> --port 8080
    python app.py --model clipseg --weights /path/to/clipseg-rd64-refined --data kvasir   # zero-shot, its test images

Upload an image (PNG, JPEG, 16-bit PNG/TIFF, DICOM, NIfTI: a window for DICOM, a slice for volumes) or pick one
of the run's test images, type prompts one per line, and see each prompt's mask as an outline in its own colour
at the image's original size, with its area (pixels; mm² when the file states the spacing) and the mean
probability inside.  The threshold slider re-thresholds cached probabilities (no new forward pass); the image is
encoded once for all prompts.  "Does it read the text?" compares the typed prompt with the empty prompt,
gibberish of the same length and another image's prompt on the same image.  Masks (PNG; NIfTI / DICOM SEG for
medical files) and a CSV to download.  The same segmentation is the API endpoint ``/segment``
(``gradio_client``).

Offline by design: serves on 127.0.0.1 unless --host says otherwise, no analytics, nothing fetched from a CDN,
no share link unless --share.  Needs the extra requirements-app.txt (``make app``).
"""
from __future__ import annotations

import argparse

from util.errors import run_cli
from util.runtime import pick_device
from vlsm import cli
from vlsm.loading import load_for_eval, load_trained


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("app.py", add_help=add_help, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[cli.model_options()])
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 opens it to the network, deliberately)")
    g.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    g.add_argument("--share", action="store_true", help="also make a public gradio.live share link (off by "
                   "default: the app is offline by design)")
    g.add_argument("--device", default="auto", help="cuda, cpu or auto")
    g.add_argument("--output-dir", default="runs", help="runs root (where train.py wrote last_run.txt)")
    d = p.add_argument_group("test images listed in the page (default: the run's dataset)")
    d.add_argument("--data", default=None, help="dataset whose test images the page lists")
    d.add_argument("--data-root", default=None, help="folder holding <name>/images (default: the run's)")
    d.add_argument("--prompts-root", default=None, help="folder holding <name>/test.json (default: the run's)")
    d.add_argument("--prompt", default=None, help="prompt key whose texts fill the prompt box (default: the run's)")
    return p


def main(args):
    """Load the model (a clear one-line error when it cannot be), build the page, serve until Ctrl-C."""
    from vlsm.app.ui import AppModel, Holder, build_app, describe_loaded, launch
    cli.fixed_threshold(args.threshold, "app.py")
    device = pick_device(args.device)
    data_options = {"data": args.data, "data_root": args.data_root, "prompts_root": args.prompts_root,
                    "prompt": args.prompt}
    loaded = load_for_eval(args, device)

    def load_run(path: str) -> AppModel:
        other = load_trained(path, args.output_dir, device)
        return AppModel(other, device, describe_loaded(other), data_options)

    holder = Holder(AppModel(loaded, device, describe_loaded(loaded), data_options), load_run)
    demo = build_app(holder)
    print(f"prompt explorer: {holder.current.header().replace('**', '')}")
    launch(demo, args.host, args.port, args.share, block=True)


if __name__ == "__main__":
    run_cli(main, get_args_parser())
