"""The prompt explorer's page and API (Gradio): ``python app.py`` builds it with :func:`build_app`.

One page: an image (upload, or one of the run's test images), prompts one per line, each prompt's mask as an
outline in its own colour on the image at its original size with a legend and a table (area in pixels and mm²,
mean probability inside), a threshold slider that re-thresholds cached probabilities, a probability heat map,
"does it read the text?", downloads.  One API endpoint, ``/segment`` (image file, prompts one per line,
threshold; optional slice and window) -> one mask PNG per prompt at the original size and the table.

Offline by design: ``GRADIO_ANALYTICS_ENABLED=False`` is set before Gradio is imported (:func:`import_gradio`),
the theme uses local fonts only, no share link unless asked.  A user's mistake is one line in the page's status
box (and a toast; the other outputs keep their values) and a ``gr.Error`` on the API (an error status), never a
traceback; anything unexpected is logged on the server and reported in one line, and the app keeps serving.
"""
from __future__ import annotations

import atexit
import functools
import html
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

from util.errors import USER_ERRORS, clear_message

from ..figures import draw_outline
from .explorer import (
    FALLBACK_OTHER_PROMPT,
    MAX_PROMPTS,
    PALETTE,
    RELIANCE_COLUMNS,
    TABLE_COLUMNS,
    AppInputError,
    PromptExplorer,
    check_threshold,
    mask_dice,
    parse_prompts,
)
from .inputs import describe_file, other_image_prompt, read_example, read_upload, run_examples, write_downloads

DEFAULT_WINDOW = "(the file's own, else auto)"


def import_gradio():
    """Gradio with its analytics off (the variable must be set before the import) and no Hugging Face
    telemetry."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError(f"the app needs Gradio ({e}): pip install --no-deps -r requirements-app.txt (or make "
                          f"app)") from None
    return gr


# ----------------------------------------------------------------------------- the server's model


class AppModel:
    """The model the page explores, with its examples; replaced as a whole when the page loads another run
    (one model per server: a local, single-user app)."""

    def __init__(self, loaded, device, describe: str, data_options: dict | None = None):
        self.loaded, self.device, self.describe = loaded, device, describe
        self.data_options = data_options or {}
        self.explorer = PromptExplorer(loaded.model, float(loaded.threshold), device)
        self.examples, self.examples_note = run_examples(loaded.args, **self.data_options)
        self.work_dir = tempfile.mkdtemp(prefix="vlsm_app_")  # downloads and API masks; removed at exit
        atexit.register(shutil.rmtree, self.work_dir, True)

    @property
    def name(self) -> str:
        return getattr(self.loaded.model, "name", "model")

    def example(self, label: str):
        for ex in self.examples:
            if ex.label == label:
                return ex
        raise AppInputError(f"{label!r} is not one of the run's test images")

    def header(self) -> str:
        m = self.loaded.model
        reads = "yes" if self.explorer.uses_text else "no (a text-free model: one mask, no prompt)"
        return (f"**Model** {html.escape(self.name)} · input {m.input_size} px · {html.escape(self.describe)} · "
                f"reads text: {reads} · threshold {self.explorer.threshold:g}")


class Holder:
    """The current :class:`AppModel` (swapped under a lock when another run is loaded from the page)."""

    def __init__(self, app_model: AppModel, load_run):
        self.current, self.load_run, self.lock = app_model, load_run, threading.Lock()

    def swap(self, path: str) -> AppModel:
        new = self.load_run(path)
        with self.lock:
            self.current = new
        return new


# ----------------------------------------------------------------------------- pictures


def overlay(rgb: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """The image with each mask's outline in its palette colour (a black halo keeps it visible)."""
    out = rgb
    for i, m in enumerate(masks):
        out = draw_outline(out, m, colour=PALETTE[i % len(PALETTE)])
    return out


def heat_map(rgb: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """The probability map in the inferno colour map (0 black .. 1 pale yellow) over the grey image."""
    from matplotlib import colormaps
    grey = rgb.mean(axis=2, keepdims=True) / 255.0
    colour = colormaps["inferno"](np.clip(prob, 0, 1))[..., :3]
    return (255 * (0.25 * grey + 0.75 * colour)).round().astype(np.uint8)


def legend_html(rows: list[dict], spacing) -> str:
    """The legend: a colour swatch per prompt with its area and mean probability inside."""
    items = []
    for r in rows:
        mm2 = f" · {r['area_mm2']:g} mm²" if spacing and r["area_mm2"] != "" else ""
        inside = f" · mean p inside {r['mean_prob_in_mask']:.2f}" if r["mean_prob_in_mask"] != "" else " · empty"
        items.append(f'<li data-colour="{r["colour"]}"><span class="swatch" style="background:{r["colour"]}">'
                     f'</span><b>{html.escape(r["prompt"])}</b> · {r["area_px"]} px{mm2}{inside}</li>')
    return '<ul class="legend">' + "".join(items) + "</ul>"


def table_frame(rows: list[dict], columns) -> "object":
    import pandas as pd
    return pd.DataFrame([[r.get(c, "") for c in columns] for r in rows], columns=list(columns))


def image_note(image) -> str:
    h, w = image.rgb.shape[:2]
    parts = [f"**{html.escape(image.name)}** · {w}×{h} px"]
    if image.spacing:
        parts.append(f"spacing {image.spacing[0]:.3g}×{image.spacing[1]:.3g} mm")
    if "slice" in image.choices:
        parts.append(f"slice {image.choices['slice']}")
    if "frame" in image.choices:
        parts.append(f"frame {image.choices['frame']}")
    window = image.choices.get("window")
    if isinstance(window, dict):
        if "center" in window:
            parts.append(f"window {window.get('name', '')} L{window['center']:g}/W{window['width']:g}")
        elif "low" in window:
            parts.append(f"window {window.get('name', '')} {window['low']:g}..{window['high']:g}")
        else:
            parts.append(f"window {window.get('name', '')}")
    return " · ".join(parts)


# ----------------------------------------------------------------------------- errors


def error_text(e: Exception) -> str:
    """One line for the page: the user's mistakes as they are; anything else as an internal error, its
    traceback printed on the server's console only."""
    if isinstance(e, (AppInputError,) + USER_ERRORS):
        return clear_message(e)
    traceback.print_exc(file=sys.stderr)
    first = str(e).splitlines()[0] if str(e) else ""
    return f"internal error ({type(e).__name__}: {first}); the details are in the server's console"


def api_guard(gr, fn):
    """An API handler whose errors are ``gr.Error`` (an error status for the client, one line, no traceback)."""
    @functools.wraps(fn)  # keeps the signature: the API's parameter names
    def run(*args):
        try:
            return fn(*args)
        except gr.Error:
            raise
        except Exception as e:
            raise gr.Error(error_text(e), print_exception=False) from None
    return run


def page_guard(gr, fn, n_outputs: int):
    """A page handler whose last output is the status box: on an error the message goes there (and into a
    toast), every other output keeps its value, and the app keeps serving."""
    @functools.wraps(fn)
    def run(*args):
        try:
            return fn(*args)
        except Exception as e:
            message = error_text(e)
            gr.Warning(message, title="Error")
            return (*[gr.skip()] * (n_outputs - 1), f"**Error:** {html.escape(message)}")
    return run


# ----------------------------------------------------------------------------- the page

CSS = """
#overlay img, #heat img {width: 100%; height: 420px; object-fit: contain; image-rendering: pixelated}
.legend {list-style: none; padding-left: 0; margin: 0}
.legend li {margin: 2px 0}
.legend .swatch {display: inline-block; width: 14px; height: 14px; margin-right: 6px; border: 1px solid #000;
                 vertical-align: middle}
"""


def build_app(holder: Holder, title: str = "Prompt explorer"):
    """The Gradio Blocks of the page and the ``/segment`` endpoint, around ``holder``'s model."""
    gr = import_gradio()
    from datasets.medical import WINDOW_NAMES

    def am() -> AppModel:
        return holder.current

    # -- page handlers: each returns its outputs in order, the status box last ----------------------------
    def set_image(image, session, source: dict) -> dict:
        return {**(session or {}), "image": image, "source": source, "segmented": None, "result": None}

    def need_image(session):
        if not session or session.get("image") is None:
            raise AppInputError("no image yet: upload an image or pick one of the run's test images")
        return session["image"]

    def show(session, prompts, threshold):
        """Masks of ``prompts`` on the session's image at ``threshold``: (session, overlay, legend, table)."""
        image = session["image"]
        ex = am().explorer
        res = ex.segment(image.rgb, prompts if ex.uses_text else None, threshold, image.spacing)
        session = {**session, "segmented": list(prompts or []), "result": res}
        return (session, overlay(image.rgb, res["masks"]), legend_html(res["rows"], image.spacing),
                table_frame(res["rows"], TABLE_COLUMNS))

    def on_upload(file, session):
        """An upload: show the window and slice controls it needs, read it (a volume: its middle slice)."""
        if not file:
            return ({}, gr.update(visible=False), gr.update(visible=False), None, "", None,
                    "Upload an image or pick a test image.")
        kind = describe_file(file)
        middle = kind.count // 2 if kind.count > 1 else None
        image = read_upload(file, middle, None)
        session = set_image(image, session, {"file": file})
        window = gr.update(visible=kind.windowed, value=DEFAULT_WINDOW)
        slider = gr.update(visible=kind.count > 1, minimum=0, maximum=max(kind.count - 1, 1), value=middle or 0,
                           label="slice (axial)" if kind.kind == "volume" else "frame")
        note = image_note(image) + (f" · {kind.note}" if kind.note else "") + " · type prompts and press Segment."
        return session, window, slider, image.rgb, "", None, note

    def on_reader_choice(file, slice_, window, session, threshold):
        """Another slice or window: read the file again, and segment again what was segmented."""
        if not file:
            return session, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        window = None if window in (None, "", DEFAULT_WINDOW) else window
        kind = describe_file(file)
        image = read_upload(file, int(slice_) if kind.count > 1 else None, window)
        prompts = (session or {}).get("segmented")
        session = set_image(image, session, {"file": file})
        if prompts is None:
            return session, image.rgb, "", None, image_note(image)
        session, view, legend, table = show(session, prompts, threshold)
        return session, view, legend, table, image_note(image)

    def on_example(label, session):
        """One of the run's test images: read it and fill the prompt box with its targets' prompts."""
        if not label:
            return (gr.skip(),) * 7
        ex = am().example(label)
        image = read_example(ex)
        session = set_image(image, session, {"example": label})
        other = other_image_prompt(am().examples, label, ex.prompts)
        prompts = "\n".join(ex.prompts[:MAX_PROMPTS]) if am().explorer.uses_text else ""
        return (session, prompts, other, image.rgb, "", None,
                image_note(image) + " · a test image of the run: its targets' prompts are in the box; press Segment.")

    def on_segment(session, prompts_text, threshold):
        """Segment every prompt of the box (the image is encoded once; prompts seen before are cached)."""
        image = need_image(session)
        check_threshold(threshold)
        ex = am().explorer
        prompts = parse_prompts(prompts_text) if ex.uses_text else None
        before, t0 = dict(ex.counts), time.perf_counter()
        session, view, legend, table = show(session, prompts, threshold)
        runs = {k: ex.counts[k] - before[k] for k in ex.counts}
        labels, probs = session["result"]["labels"], session["result"]["probs"]
        status = (f"{image_note(image)} · {len(labels)} mask(s) in {time.perf_counter() - t0:.2f} s: "
                  f"{runs['image_encodings']} image encoding(s), {runs['text_encodings']} text encoding(s), "
                  f"{runs['decodes']} decode(s) (prompts and images seen before are cached).")
        return (session, view, legend, table, gr.update(choices=labels, value=labels[0]),
                heat_map(image.rgb, probs[0]), status)

    def on_threshold(session, threshold):
        """A new threshold: the cached probabilities re-thresholded, no forward pass."""
        t = check_threshold(threshold)
        if not session or session.get("segmented") is None:
            return (gr.skip(),) * 5
        before = dict(am().explorer.counts)
        session, view, legend, table = show(session, session["segmented"], t)
        ran = sum(am().explorer.counts[k] - before[k] for k in before)
        how = "no forward pass" if ran == 0 else f"{ran} forward step(s): the cache had dropped the image"
        return session, view, legend, table, f"threshold {t:g}: the cached probabilities re-thresholded ({how})."

    def on_heat(session, label):
        if not session or not session.get("result") or label not in session["result"]["labels"]:
            return gr.skip(), gr.skip()
        res = session["result"]
        return heat_map(session["image"].rgb, res["probs"][res["labels"].index(label)]), gr.skip()

    def on_reliance(session, prompts_text, threshold, other):
        """The typed prompts against the empty prompt, gibberish and another image's prompt, on this image."""
        image = need_image(session)
        prompts = parse_prompts(prompts_text)
        current = (session.get("source") or {}).get("example")
        other = (other or "").strip() or other_image_prompt(am().examples, current, prompts) or FALLBACK_OTHER_PROMPT
        before = dict(am().explorer.counts)
        rel = am().explorer.text_reliance(image.rgb, prompts, threshold, other)
        gallery = []
        for i, panel in enumerate(rel["masks"]):
            ref = panel[0][2]
            for condition, text, mask in panel:
                dice = "" if condition == "typed" else f" · Dice {mask_dice(mask, ref):.2f} with typed"
                gallery.append((draw_outline(image.rgb, mask, colour=PALETTE[i % len(PALETTE)]),
                                f"{condition}: {text!r}{dice}"))
        runs = am().explorer.counts["decodes"] - before["decodes"]
        status = (f"\"does it read the text?\": {len(prompts)} prompt(s) x {len(rel['masks'][0])} conditions at "
                  f"threshold {rel['threshold']:g}, {runs} new decode(s), no new image encoding.")
        return gallery, table_frame(rel["rows"], RELIANCE_COLUMNS), f"**{rel['verdict']}**", other, status

    def on_download(session, threshold):
        image = need_image(session)
        if session.get("segmented") is None:
            raise AppInputError("nothing to download yet: press Segment first")
        res = am().explorer.segment(image.rgb, session["segmented"] or None, threshold, image.spacing)
        out = tempfile.mkdtemp(prefix="download_", dir=am().work_dir)
        files = write_downloads(out, image, res, am().name)
        return files, f"{len(files)} file(s) ready to download (threshold {res['threshold']:g})."

    def on_load_run(path):
        """Another run folder (or checkpoint file); the current model stays when the new one cannot be read."""
        path = (path or "").strip()
        if not path:
            raise AppInputError("type a run folder (or a .pth/.safetensors file) to load")
        new = holder.swap(path)
        text = new.explorer.uses_text
        prompt_box = gr.update(interactive=text, info=_prompt_info(new), **({} if text else {"value": ""}))
        return (new.header(), prompt_box, gr.update(interactive=text),
                gr.update(choices=[ex.label for ex in new.examples], value=None),
                gr.update(value=new.explorer.threshold), {}, f"loaded {html.escape(path)}")

    # -- the API ------------------------------------------------------------------------------------------
    def api_segment(image_file, prompts, threshold, slice_index=-1, window=""):
        """One image file, prompts one per line, a threshold in [0, 1] (optional: the slice of a volume or the
        frame of a DICOM file, -1 = none; an intensity window) -> one mask PNG per prompt at the image's original
        size (0/255; caption: the prompt) and the table (area in pixels and mm², mean probability inside)."""
        if not image_file:
            raise AppInputError("no image file given")
        index = None if slice_index in (None, "") or int(slice_index) < 0 else int(slice_index)
        image = read_upload(image_file, index, window or None)
        ex = am().explorer
        res = ex.segment(image.rgb, parse_prompts(prompts) if ex.uses_text else None, threshold, image.spacing)
        out = tempfile.mkdtemp(prefix="api_", dir=am().work_dir)
        files = [f for f in write_downloads(out, image, res, am().name) if f.endswith(".png")]
        return list(zip(files, res["labels"])), table_frame(res["rows"], TABLE_COLUMNS)

    # -- the layout --------------------------------------------------------------------------------------
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        session = gr.State({})
        header = gr.Markdown(am().header(), elem_id="header")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                upload = gr.File(label="Image: PNG, JPEG, 16-bit PNG/TIFF, DICOM or NIfTI", type="filepath",
                                 elem_id="upload")
                examples = gr.Dropdown([ex.label for ex in am().examples], value=None,
                                       label="or one of the run's test images", info=am().examples_note or None,
                                       elem_id="examples")
                window = gr.Dropdown([DEFAULT_WINDOW, *WINDOW_NAMES], value=DEFAULT_WINDOW, allow_custom_value=True,
                                     label="intensity window (a name, or LEVEL/WIDTH such as 40/400)", visible=False,
                                     elem_id="window")
                slice_ = gr.Slider(0, 1, value=0, step=1, label="slice", visible=False, elem_id="slice")
                prompts = gr.Textbox(lines=4, label=f"prompts, one per line (at most {MAX_PROMPTS})",
                                     placeholder="polyp\nsmall round polyp on the left",
                                     interactive=am().explorer.uses_text, info=_prompt_info(am()), elem_id="prompts")
                threshold = gr.Slider(0.0, 1.0, value=am().explorer.threshold, step=0.01,
                                      label="threshold (probability; default: the run's)", elem_id="threshold")
                segment_btn = gr.Button("Segment", variant="primary", elem_id="segment")
                with gr.Accordion("Load another run", open=False):
                    run_path = gr.Textbox(label="run folder or checkpoint file", elem_id="run_path")
                    load_btn = gr.Button("Load", elem_id="load_run")
            with gr.Column(scale=2):
                status = gr.Markdown("Upload an image or pick a test image.", elem_id="status")
                with gr.Tabs():
                    with gr.Tab("Outlines"):
                        view = gr.Image(label="masks at the original size", type="numpy", format="png", height=440,
                                        interactive=False, elem_id="overlay")
                        legend = gr.HTML("", elem_id="legend")
                    with gr.Tab("Probability heat map"):
                        heat_which = gr.Dropdown([], label="prompt", elem_id="heat_which")
                        heat = gr.Image(label="probability (0 dark .. 1 bright yellow)", type="numpy", format="png",
                                        height=440, interactive=False, elem_id="heat")
                table = gr.Dataframe(headers=list(TABLE_COLUMNS), label="per prompt", interactive=False,
                                     elem_id="table")
                with gr.Accordion("Does it read the text?", open=True):
                    other = gr.Textbox(label="another image's prompt (filled from the run's test set when empty)",
                                       elem_id="other_prompt")
                    reliance_btn = gr.Button("Does it read the text?", interactive=am().explorer.uses_text,
                                             elem_id="reliance")
                    verdict = gr.Markdown("", elem_id="verdict")
                    reliance_gallery = gr.Gallery(label="typed · empty · gibberish · another image's prompt",
                                                  columns=4, format="png", elem_id="reliance_gallery")
                    reliance_table = gr.Dataframe(headers=list(RELIANCE_COLUMNS), interactive=False,
                                                  elem_id="reliance_table")
                download_btn = gr.Button("Prepare downloads (PNG masks, CSV; NIfTI / DICOM SEG for medical files)",
                                         elem_id="download")
                files = gr.Files(label="downloads", interactive=False, elem_id="files")
        with gr.Column(visible=False):  # the API's own inputs and outputs (not shown in the page)
            api_file = gr.File(type="filepath", label="image file")
            api_prompts = gr.Textbox(label="prompts, one per line")
            api_threshold = gr.Number(value=am().explorer.threshold, label="threshold")
            api_slice = gr.Number(value=-1, label="slice of a volume / frame of a DICOM file (-1: none)", precision=0)
            api_window = gr.Textbox(value="", label="intensity window")
            api_masks = gr.Gallery(label="masks", format="png")
            api_table = gr.Dataframe(headers=list(TABLE_COLUMNS), label="table")
            api_btn = gr.Button("segment")

        def on(event, fn, inputs, outputs, **kw):
            event(page_guard(gr, fn, len(outputs)), inputs, outputs, api_visibility="private", **kw)

        upload_out = [session, window, slice_, view, legend, table, status]
        on(upload.upload, on_upload, [upload, session], upload_out)
        on(upload.clear, on_upload, [upload, session], upload_out)
        for event in (slice_.input, window.input):  # the user's changes only, the last of a drag
            on(event, on_reader_choice, [upload, slice_, window, session, threshold],
               [session, view, legend, table, status], trigger_mode="always_last")
        on(examples.input, on_example, [examples, session], [session, prompts, other, view, legend, upload, status])
        segment_out = [session, view, legend, table, heat_which, heat, status]
        on(segment_btn.click, on_segment, [session, prompts, threshold], segment_out)
        on(threshold.change, on_threshold, [session, threshold], [session, view, legend, table, status],
           trigger_mode="always_last", show_progress="hidden")
        on(heat_which.input, on_heat, [session, heat_which], [heat, status])
        on(reliance_btn.click, on_reliance, [session, prompts, threshold, other],
           [reliance_gallery, reliance_table, verdict, other, status])
        on(download_btn.click, on_download, [session, threshold], [files, status])
        on(load_btn.click, on_load_run, [run_path], [header, prompts, reliance_btn, examples, threshold, session,
                                                     status])
        api_btn.click(api_guard(gr, api_segment), [api_file, api_prompts, api_threshold, api_slice, api_window],
                      [api_masks, api_table], api_name="segment",
                      api_description=" ".join(api_segment.__doc__.split()))
    return demo


def _prompt_info(app_model: AppModel) -> str:
    if app_model.explorer.uses_text:
        return "each line is one prompt, with its own colour; Enter adds a line, Shift+Enter segments"
    return (f"disabled: {app_model.name} is a text-free CNN; it segments what it was trained on and shows one mask "
            f"per class, whatever is typed")


def launch(demo, host: str = "127.0.0.1", port: int | None = None, share: bool = False, block: bool = True) -> str:
    """Serve the page on ``host``:``port`` (loopback unless asked), no share link unless ``share``, no server-side
    rendering (no Node), no MCP server; print the address.  With ``block``, serve until Ctrl-C.  Returns the
    local address."""
    gr = import_gradio()
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # local fonts: nothing fetched
                              font_mono=["ui-monospace", "Consolas", "monospace"])
    demo.queue(default_concurrency_limit=1)
    try:
        _, url, share_url = demo.launch(server_name=host, server_port=port, share=share, ssr_mode=False,
                                        mcp_server=False, pwa=False, prevent_thread_lock=True, show_error=False,
                                        theme=theme, css=CSS, footer_links=["api"], quiet=True, inbrowser=False)
    except OSError as e:
        busy = "empty port" in str(e)
        reason = "the port is in use" if busy else str(e).splitlines()[0]
        raise ValueError(f"cannot serve on {host}:{port}: {reason}; pass another --port") from None
    where = "this machine only" if host in ("127.0.0.1", "localhost", "::1") else f"every machine that reaches {host}"
    print(f"serving on {url} ({where})" + (f"; public share link {share_url}" if share_url else "")
          + ("; Ctrl-C stops" if block else ""), flush=True)
    if block:
        try:
            demo.block_thread()
        except KeyboardInterrupt:
            pass
    return url


def describe_loaded(loaded) -> str:
    """Where the model came from, for the page's header: a run folder as ``<data>/<model>/<prompt>/<stamp>``
    (relative to the working folder when it is below it), else the weights."""
    if loaded.run_dir:
        run = os.path.normpath(os.path.abspath(loaded.run_dir))
        rel = os.path.relpath(run)
        return f"run {rel if not rel.startswith('..') else os.path.join(*run.split(os.sep)[-4:])}"
    return f"weights {loaded.weights or 'none (random)'}"

