"""The ``graft`` command: one subcommand per stage.

Arguments are declared here, with no heavy imports, so ``graft --help`` is
instant and ``graft eval``/``graft export`` never import the training stack:
each handler is imported only when its subcommand runs. A config whose model
lives in a light module (no torch, no open_clip) is validated before the
handler is imported, so a misspelt key comes back in well under a second.

Every expected failure (:class:`graft.errors.GraftError`, a missing file, a
bad value) prints one line, ``graft COMMAND: error: ...``, and exits 2;
``-v`` adds the traceback and the INFO logs of third-party libraries.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from graft import __version__

# subcommand -> (module, function). The function takes the parsed args and returns an exit code.
HANDLERS = {
    "build": ("graft.pipeline.build", "run_build_command"),
    "embed": ("graft.pipeline.embed", "run_embed_command"),
    "band-stats": ("graft.dataset.band_stats", "run_band_stats_command"),
    "train": ("graft.training.trainer", "run_train_command"),
    "eval": ("graft.evaluation.run", "run_eval_command"),
    "export": ("graft.evaluation.export", "run_export_command"),
    "vqa": ("graft.vqa.run", "run_vqa_command"),
    "import": ("graft.evaluation.released", "run_import_command"),
    "map": ("graft.mapsearch.app", "run_map_command"),
    "filter-train": ("graft.training.indoor_filter", "run_filter_train_command"),
    "doctor": ("graft.doctor", "run_doctor_command"),
    "demo": ("graft.demo.command", "run_demo_command"),
}

# subcommand -> (module, config class) validated before the handler (and torch) is imported.
EARLY_CONFIGS = {
    "train": ("graft.training.config", "TrainConfig"),
}


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.max_steps=100 (repeatable; VALUE is parsed as YAML)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graft",
        description="Train remote-sensing vision-language models without text annotations, by aligning "
        "satellite encoders to frozen CLIP embeddings of co-located ground photos (GRAFT).",
        epilog="Stages: build -> embed -> train -> eval -> export (import: the authors' released models; map: text search over a region). 'graft demo' runs them all on a synthetic world.",
    )
    parser.add_argument("--version", action="version", version=f"graft {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("build", help="build a dataset: ground photos -> indoor filter -> satellite tiles -> shards",
                       description="Collect geotagged ground photos, drop indoor shots, fetch co-located satellite "
                       "tiles and write WebDataset shards plus manifest.parquet. Re-running resumes: finished "
                       "partitions are skipped.")
    p.add_argument("config", help="dataset YAML (see data_pipeline/*.yaml)")
    p.add_argument("--distributor", choices=["local", "ray"], default=None,
                   help="run partitions on a local thread pool (default) or as Ray tasks (needs the 'ray' extra)")
    p.add_argument("--workers", type=int, default=None, help="parallel partitions (local) / tasks in flight (ray)")
    _add_set(p)

    p = sub.add_parser("band-stats", help="(re)write a dataset's per-band statistics (band_stats.json)",
                       description="Mean, std and valid-pixel count of every tile band, per split, written beside "
                       "the manifest. The build writes them; this recomputes them for an older dataset.")
    p.add_argument("dataset", help="dataset folder written by 'graft build'")

    p = sub.add_parser("embed", help="cache frozen-CLIP embeddings of every kept ground photo",
                       description="Run every kept ground photo through the frozen CLIP tower once and store fp16 "
                       "embeddings in its tile's shard sample, so training never decodes a ground JPEG. "
                       "Resumes shard by shard.")
    p.add_argument("dataset", help="dataset folder written by 'graft build'")
    p.add_argument("--clip-model", default=None, help="open_clip model name or local-dir:/hf-hub: spec")
    p.add_argument("--clip-pretrained", default=None, help="pretrained tag or local weights file")
    p.add_argument("--config", default=None, help="training YAML whose 'clip' section to use instead")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="parallel JPEG decoding threads")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--force", action="store_true", help="recompute even if a cache with another CLIP spec exists")

    p = sub.add_parser("train", help="train an image- or pixel-level satellite encoder (run under torchrun for DDP)",
                       description="Train a satellite encoder against cached ground embeddings with the 1:N "
                       "contrastive loss. Under torchrun every rank's ground embeddings join the softmax.")
    p.add_argument("config", help="training YAML (see train/sentinel2_image.yaml, train/naip_image.yaml ...)")
    p.add_argument("--resume", default=None, metavar="latest|PATH",
                   help="resume from the newest valid checkpoint in the run folder, or from a checkpoint folder")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in a run folder that already holds a run (its checkpoints and metrics are "
                   "moved aside to RUN/previous-N/)")
    p.add_argument("--live-ground", action="store_true",
                   help="embed ground photos with the frozen tower on the fly instead of reading the cache")
    _add_set(p)

    p = sub.add_parser("eval", help="zero-shot classification, retrieval, segmentation, probes and alignment",
                       description="Evaluate GRAFT checkpoints/exports side by side with the frozen CLIP baseline, "
                       "and write report.json, report.md and plots.")
    p.add_argument("config", help="evaluation YAML (see eval/*.yaml)")
    _add_set(p)

    p = sub.add_parser("export", help="export a checkpoint as an open_clip 'local-dir:' model folder",
                       description="Write OUT_DIR so that open_clip.create_model_and_transforms('local-dir:OUT_DIR') "
                       "loads it: the image tower is the satellite encoder, the text tower is CLIP's.")
    p.add_argument("checkpoint", help="checkpoint folder, or a run folder (its newest valid checkpoint is used)")
    p.add_argument("out_dir")

    p = sub.add_parser("vqa", help="answer a question about one satellite image with the pixel-level model",
                       description="Turn QUESTION into a small JSON program (RSVQA's question templates, or an\n"
                       "OpenAI-compatible chat endpoint with --chat-url), validate it, and run it on IMAGE with the\n"
                       "model's pixel-level concept maps: exists, count (connected regions), area (pixels x GSD^2),\n"
                       "comparisons. Prints the program, the answer and the regions found for each concept.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                       "  graft vqa tile.tif 'Is there a water area?' --model runs/s2-pixel\n"
                       "  graft vqa tile.png 'How many buildings are there?' --model runs/naip-pixel-export --gsd 0.6\n"
                       "  graft vqa tile.tif 'Are there more roads than buildings?' --model runs/s2-pixel \\\n"
                       "      --chat-url http://127.0.0.1:11434/v1 --chat-model qwen2.5:7b-instruct")
    p.add_argument("image", help="the image: GeoTIFF (its GSD is read from the georeference), PNG or JPEG")
    p.add_argument("question", help="e.g. 'Is there a road?', 'How many buildings are there?', "
                   "'What is the area covered by water areas?', 'Are there more roads than buildings?'")
    p.add_argument("--model", default=None, help="a pixel-level training run / checkpoint folder, or a 'graft export' "
                   "folder (image-level models answer through their ViT's patch tokens)")
    p.add_argument("--clip-model", default=None, help="answer with a frozen open_clip model instead (the baseline)")
    p.add_argument("--clip-pretrained", default=None, help="pretrained tag or weights file for --clip-model")
    p.add_argument("--gsd", type=float, default=None, help="metres per pixel (default: from the GeoTIFF georeference)")
    p.add_argument("--vocabulary", default=None, metavar="A,B,...",
                   help="more concepts each asked concept must beat for a pixel (comma-separated)")
    p.add_argument("--background", default=None, metavar="A,B,...",
                   help="background prompts replacing the generic land-cover list ('' for none)")
    p.add_argument("--template", action="append", default=None, metavar="TEMPLATE",
                   help="prompt template with {} for the concept (repeatable; default 'a photo of a {}.')")
    p.add_argument("--chat-url", default=None, help="OpenAI-compatible API base that writes the program instead of "
                   "the built-in RSVQA parser, e.g. http://127.0.0.1:11434/v1")
    p.add_argument("--chat-model", default=None, help="model name served at --chat-url")
    p.add_argument("--chat-key-env", default=None, metavar="VAR", help="environment variable holding the API key")
    p.add_argument("--sam-checkpoint", default=None, help="refine concept masks with this local SAM checkpoint")
    p.add_argument("--sam-model-type", default="vit_h")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p = sub.add_parser("import", help="import a released GRAFT checkpoint (the authors' files) as a graft checkpoint",
                       description="Convert a released GRAFT checkpoint (satellite_image_backbone.* = a Hugging Face "
                       "CLIPVisionModelWithProjection, projector.* = the pixel-level head; plain, 'model.'-prefixed "
                       "or Lightning 'state_dict' layouts) into a graft run folder that 'graft eval', 'graft export' "
                       "and 'graft map' take. The text tower comes from an open_clip spec.")
    p.add_argument("released", help="the released file (.ckpt, .pt, .pth or .safetensors)")
    p.add_argument("out_dir", help="run folder to write (OUT_DIR/checkpoints/step-N/)")
    p.add_argument("--kind", choices=["image", "pixel"], default=None,
                   help="image- or pixel-level (default: pixel if the file has a projector, else image)")
    p.add_argument("--clip-model", default="ViT-B-16-quickgelu",
                   help="open_clip model giving the text tower and the image tower's architecture "
                   "(default: ViT-B-16-quickgelu, the released models' backbone)")
    p.add_argument("--clip-pretrained", default="openai", help="its pretrained tag or local weights file "
                   "(default: openai)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a checkpoint that pickles more than tensors (only for files you trust)")

    p = sub.add_parser("map", help="search a region by text: heat map + top tiles in a local web page",
                       description="Embed every tile of a region (a GeoTIFF/COG, or a dataset folder built by "
                       "'graft build') once with trained or imported models (cached, resumable), then either serve "
                       "a local web page (type a concept, see the pixel-level similarity heat map and the top-k "
                       "tiles) or, with --query and --out, write the heat map as a GeoTIFF in the region's CRS. "
                       "Nothing is fetched from the internet; the page binds to 127.0.0.1 unless --host says otherwise.",
                       epilog="examples:  graft map region.tif -m runs/s2-image -m runs/s2-pixel   |   "
                       "graft map region.tif -m runs/s2-pixel --query 'solar farm' --out solar.tif")
    p.add_argument("region", help="GeoTIFF/COG of the region, or a dataset folder written by 'graft build'")
    p.add_argument("--model", "-m", dest="models", action="append", required=True, metavar="CHECKPOINT",
                   help="checkpoint, run or 'graft export' folder, image- or pixel-level (give one of each with two "
                   "--model). Pixel-level embeddings make the heat map; see --rank for the tile list")
    p.add_argument("--cache", default=None, help="embedding cache folder (default: runs/map/<region>-<hash>)")
    p.add_argument("--tile-px", type=int, default=None,
                   help="raster region: tile side in raster pixels (default: the model's input size)")
    p.add_argument("--template", default="a satellite image of {}.",
                   help="prompt a query is put into, '{}' = the query (default: 'a satellite image of {}.'; "
                   "'{}' alone uses the text as typed)")
    p.add_argument("--top-k", type=int, default=12, help="tiles listed per query (default 12)")
    p.add_argument("--rank", choices=["auto", "image", "pixel"], default="auto",
                   help="order tiles by image-level similarity or by their mean pixel-level similarity (the heat "
                   "map's); auto: pixel when a pixel-level model is given, else image")
    p.add_argument("--batch-size", type=int, default=32, help="tiles per forward pass (default 32)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--query", default=None, help="non-interactive: print this query's top tiles (and write --out) instead of serving")
    p.add_argument("--out", default=None, help="with --query: the heat-map GeoTIFF to write, in the raster's CRS (a dataset region: a folder, "
                   "one GeoTIFF per top tile)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port to serve on (default 8765; 0 picks a free one)")

    p = sub.add_parser("filter-train", help="fine-tune a 2-class indoor/outdoor ResNet18 on a folder",
                       description="Train the ResNet18 indoor filter on FOLDER/indoor and FOLDER/outdoor images.")
    p.add_argument("folder", help="folder with indoor/ and outdoor/ subfolders")
    p.add_argument("out", help="output weights file (.safetensors)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--init", default=None, help="initial ResNet18 weights file (e.g. Places365); random if omitted")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("doctor", help="check credentials and reachability of Earth Engine and Flickr",
                       description="Say exactly which credential or service is missing for a live build.")
    p.add_argument("--config", default=None, help="dataset YAML, to check only the sources it uses")
    p.add_argument("--offline", action="store_true", help="check credentials only, make no network calls")

    p = sub.add_parser("demo", help="the whole job on a synthetic world, on CPU, in minutes",
                       description="Generate a synthetic world, train a tiny CLIP teacher on ground photos, build "
                       "the dataset with the real pipeline, cache embeddings, train image- and pixel-level "
                       "models, evaluate against the teacher-direct baseline, export, and write a report.")
    p.add_argument("--out", default=None, help="output folder (default: runs/demo, or runs/demo-ms)")
    p.add_argument("--quick", action="store_true", help="smaller world and fewer steps (used by the test suite)")
    p.add_argument("--multispectral", action="store_true",
                   help="the multispectral variant: two classes alike in RGB, apart in near-infrared; trains an "
                   "RGB and an RGB+NIR encoder and compares them")
    p.add_argument("--seed", type=int, default=0)
    return parser


def configure_logging(verbose: bool) -> None:
    """graft's own INFO lines always; other libraries' (open_clip, faiss, ...) only with ``-v``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:
        logging.getLogger("graft").setLevel(logging.INFO)


def _validate_early(args: argparse.Namespace) -> None:
    """Validate the command's config before its handler's heavy imports (torch, open_clip)."""
    if args.command not in EARLY_CONFIGS:
        return
    from graft.config import load_config

    module, cls = EARLY_CONFIGS[args.command]
    load_config(getattr(importlib.import_module(module), cls), args.config, getattr(args, "overrides", None))


def is_expected(e: BaseException) -> bool:
    """An error whose message is the whole story: bad input or a missing prerequisite, not a bug."""
    from graft.errors import GraftError

    return isinstance(e, (GraftError, FileNotFoundError, ValueError))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    from graft.credentials import install_log_redaction, redact

    install_log_redaction()
    try:
        _validate_early(args)
        module, func = HANDLERS[args.command]
        handler = getattr(importlib.import_module(module), func)
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - last line of defence: a clean message, secrets masked
        if args.verbose:
            raise
        if is_expected(e):
            print(f"graft {args.command}: error: {redact(str(e))}", file=sys.stderr)
            return 2
        print(f"graft {args.command}: error: unexpected {redact(f'{type(e).__name__}: {e}')} "
              "(re-run with -v for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
