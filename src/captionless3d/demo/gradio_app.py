"""The demo page, built with Gradio (optional extra ``demo``): upload a photo or a point cloud / mesh, see the cloud
in 3D, the zero-shot labels and the nearest indexed shapes (thumbnails, each viewable in 3D).

:func:`build_demo` lays out the page over a :class:`~captionless3d.demo.service.DemoService`; :func:`launch_demo`
serves it on ``127.0.0.1`` by default, with Gradio's analytics off, no share link, no server-side rendering (which
would need Node) and a size limit on uploads. Gradio serves its own fonts and scripts, so the page needs no network.

Page elements (their ``elem_id``; the browser test reads them): ``upload`` (the file input), ``labels`` (comma-
separated zero-shot labels), ``k``, ``error`` (the message of a bad file; the results are cleared), ``results``:
``summary`` ("query N: ..."), ``query-3d`` (the uploaded cloud as the encoder saw it), ``query-photo``, ``label-table``
(label, cosine similarity; clouds only), ``hits`` (thumbnail gallery; selecting one shows it in ``hit-3d``),
``hit-table`` (rank, path, score), ``hit-3d``; and the clickable examples from the indexed test split.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from captionless3d.demo import DEFAULT_HOST, DEFAULT_PORT
from captionless3d.demo.service import MAX_K, DemoService, QueryResult, parse_labels
from captionless3d.errors import Captionless3DError

log = logging.getLogger(__name__)

#: Largest accepted upload (Gradio refuses bigger files before they reach the model).
MAX_FILE_SIZE = "64mb"

#: The 3D viewers' camera: azimuth and polar angle in degrees, distance (the clouds fill the unit sphere).
CAMERA = (60.0, 70.0, 3.0)
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def _md(text: Any) -> str:
    """Text shown verbatim inside Markdown (file names and labels are user input)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def _import_gradio() -> Any:
    # analytics off before gradio reads the variable; nothing may call home from the page or the server
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError as exc:
        from captionless3d.errors import ConfigError

        raise ConfigError("the demo page needs gradio: pip install 'captionless3d[demo]'") from exc
    return gr


def label_table(labels: list[tuple[str, float]]) -> str:
    """Markdown table of zero-shot labels, best first."""
    rows = "\n".join(f"| {i} | {_md(name)} | {score:.4f} |" for i, (name, score) in enumerate(labels, start=1))
    return f"| rank | label | cosine similarity |\n| --- | --- | --- |\n{rows}"


def hit_table(result: QueryResult) -> str:
    """Markdown table of the retrieved shapes, best first."""
    rows = "\n".join(f"| {h.rank} | {_md(h.path)} | {h.score:.4f} |" for h in result.hits)
    return f"| rank | shape | cosine similarity |\n| --- | --- | --- |\n{rows}"


def build_demo(service: DemoService) -> Any:
    """The Gradio ``Blocks`` of the demo page over ``service`` (not launched)."""
    gr = _import_gradio()
    from captionless3d.api.inputs import IMAGE_SUFFIXES, POINT_SUFFIXES

    with gr.Blocks(title=service.title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {_md(service.title)}")
        gr.Markdown(service.describe(), elem_id="info")
        hits_state = gr.State([])  # (position, path) of the shown hits, for the gallery's select event
        count = gr.State(0)  # queries of this browser session: the summary and errors say "query N"
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Photo or point cloud / mesh", file_count="single", type="filepath",
                                 file_types=list(IMAGE_SUFFIXES + POINT_SUFFIXES), elem_id="upload")
                labels = gr.Textbox(label="Zero-shot labels (comma-separated; point clouds)",
                                    value=", ".join(service.labels), elem_id="labels")
                k = gr.Slider(1, MAX_K, value=service.k, step=1, label="Shapes shown (k)", elem_id="k")
            with gr.Column(scale=2):
                # Nothing here is ever hidden: Gradio's 3D viewer does not start its renderer when it is revealed
                # inside a container that was hidden (gradio 6.31); a bad file clears the results instead.
                error = gr.Markdown(elem_id="error")
                with gr.Column(elem_id="results"):
                    summary = gr.Markdown(elem_id="summary")
                    with gr.Row():
                        query_3d = gr.Model3D(label="Uploaded cloud (as the encoder sees it)", elem_id="query-3d",
                                              clear_color=(1.0, 1.0, 1.0, 1.0), camera_position=CAMERA, height=300)
                        query_photo = gr.Image(label="Uploaded photo", elem_id="query-photo", interactive=False,
                                               height=300)
                        labels_md = gr.Markdown(elem_id="label-table")
                    gallery = gr.Gallery(label="Nearest indexed shapes (select one to view it in 3D)", columns=5,
                                         rows=1, height=210, allow_preview=False, elem_id="hits")
                    with gr.Row():
                        hits_md = gr.Markdown(elem_id="hit-table")
                        hit_3d = gr.Model3D(label="Selected shape in 3D", elem_id="hit-3d",
                                            clear_color=(1.0, 1.0, 1.0, 1.0), camera_position=CAMERA, height=300)
        outputs = [error, summary, query_3d, query_photo, labels_md, gallery, hits_md, hit_3d, hits_state,
                   count, upload]

        def on_file(path: str | None, labels_text: str, k_value: float, n: int) -> list[Any]:
            if not path:  # the input was cleared (by this handler, after a query): nothing to do
                return [gr.skip()] * len(outputs)
            n += 1
            filename = Path(path).name  # Gradio keeps the uploaded file's own name in its cache directory
            try:
                result = service.query(path, filename=filename, labels=parse_labels(labels_text, service.labels),
                                       k=int(k_value))
                top = result.hits[0] if result.hits else None
                top_glb = str(service.shape_glb(top.position)) if top is not None else None
            except Captionless3DError as exc:  # a bad file: its message on the page; the server goes on
                log.info("demo: rejected %s: %s", filename, exc)
                return [f"**Query {n}: error.** {_md(exc)}", "", None, None, "", [], "", None, [], n, None]
            points = result.kind == "points"
            what = "point cloud" if points else "photo"
            text = (f"query {n}: {_md(result.filename)} ({what}), {len(result.hits)} nearest of {len(service.index)} "
                    f"indexed shapes in {result.seconds:.2f} s")
            gallery_items = [(str(h.thumbnail), f"{h.rank}. {h.path} ({h.score:.3f})") for h in result.hits
                             if h.thumbnail is not None]
            return [
                "",
                text,
                str(result.cloud_glb) if points else None,
                None if points else path,
                label_table(result.labels) if points else "Zero-shot labels are given for point clouds.",
                gallery_items,
                hit_table(result),
                gr.update(value=top_glb, label=f"Shape 1 in 3D: {top.path}" if top is not None else "Selected shape"),
                [(h.position, h.path) for h in result.hits],
                n,
                None,
            ]

        def on_select(shown: list[tuple[int, str]], event: Any) -> Any:
            if not shown or event.index is None or not 0 <= int(event.index) < len(shown):
                return gr.skip()
            position, path = shown[int(event.index)]
            return gr.update(value=str(service.shape_glb(position)),
                             label=f"Shape {int(event.index) + 1} in 3D: {path}")

        # Gradio passes the event data by the parameter's annotation; it cannot read a postponed (string) annotation
        on_select.__annotations__["event"] = gr.SelectData
        upload.change(on_file, inputs=[upload, labels, k, count], outputs=outputs, concurrency_limit=1)
        gallery.select(on_select, inputs=[hits_state], outputs=[hit_3d])
        if service.examples:
            gr.Examples(examples=[[str(p)] for p in service.examples], inputs=[upload],
                        example_labels=[p.stem.replace("_", " ") for p in service.examples],
                        label="Examples from the indexed test split (click one)", examples_per_page=24)
    return demo


def launch_demo(service: DemoService, host: str = DEFAULT_HOST, port: int | None = DEFAULT_PORT, *,
                block: bool = True, quiet: bool = True) -> tuple[Any, str]:
    """Build and serve the page. ``port`` ``None`` or 0: Gradio picks a free one (from 7860 up).

    Returns ``(demo, url)``; with ``block=False`` the server runs in a background thread (stop it with
    ``demo.close()``), otherwise this call serves until interrupted.
    """
    demo = build_demo(service)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(
        server_name=host, server_port=port or None, share=False, prevent_thread_lock=True, quiet=quiet,
        allowed_paths=service.allowed_paths(), max_file_size=MAX_FILE_SIZE, ssr_mode=False, mcp_server=False,
        pwa=False, show_error=True, footer_links=["settings"],
    )
    url = str(url)
    if block:
        try:
            demo.block_thread()
        finally:
            demo.close()
    return demo, url


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "MAX_FILE_SIZE", "build_demo", "hit_table", "label_table", "launch_demo"]
