"""RelayLLM Studio, the Gradio app (Hugging Face Space entry point). It only builds the demo and launches it.

    python app.py                              # http://127.0.0.1:7860, the tiny pair on CPU
    python app.py --host 0.0.0.0 --port 7860   # or GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (Spaces set them)
    RELAY_HOSTED=1 python app.py               # public mode: registered pairs only, no paths from the UI

Environment: RELAY_RESULTS_DIR (results folder for the Explorer), RELAY_BACKEND (hf | vllm).
"""

from __future__ import annotations

import argparse
import os

from relay_demo.ui import QUEUE, build_demo, launch_options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="RelayLLM Studio (Gradio app)")
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    ap.add_argument("--results", default=os.environ.get("RELAY_RESULTS_DIR"), help="results folder")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    demo = build_demo(args.results)
    demo.queue(**QUEUE).launch(server_name=args.host, server_port=args.port, **launch_options())


if __name__ == "__main__":
    main()
