"""Tag or label text with a trained model: a saved folder or a model in the MLflow registry.

    python -m metaxl_core.predict --model models/yor --input sentences.txt
    python -m metaxl_core.predict --model models:/metaxl-ner-yor/1 --input sentences.txt \\
        --mlflow-uri sqlite:///runs/sweep/mlflow.db --output tags.txt

The input has one sentence (NER: words separated by spaces) or one text (sentiment) per line.
NER output is CoNLL-style: a `word<TAB>tag` line per word, a blank line after each sentence (an
empty input line gives an empty sentence). Sentiment output is `label<TAB>text`, one per line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from tqdm.auto import tqdm

from metaxl_core.atomic import write_atomic
from metaxl_core.errors import MetaXLError
from metaxl_core.saved_model import SavedModel, load_model

CHUNK_LINES = 512  # lines predicted at once (and the progress bar's step)
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def read_lines(path: str | Path) -> list[str]:
    """The file's lines; MetaXLError for a missing, non-UTF-8 or empty file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise MetaXLError(f"cannot read the input {str(path)!r}: {err.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise MetaXLError(f"{path}, line {line}: not UTF-8 (byte {raw[err.start]:#04x}); "
                          "convert the file, e.g. `iconv -f latin1 -t utf-8`") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise MetaXLError(f"{path}: empty: it needs one sentence or text per line")
    return lines


@contextlib.contextmanager
def tracking_uri(uri: str):
    """MLflow's fluent API (and registry) pointed at `uri` for the block, then put back:
    `mlflow.set_tracking_uri` also sets $MLFLOW_TRACKING_URI, which a sweep started later from
    this process would inherit and log to."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None: unset again


def open_model(name: str, mlflow_uri: str | None = None) -> SavedModel:
    """A saved folder, or an MLflow model URI (models:/NAME/VERSION, models:/NAME@ALIAS,
    runs:/RUN_ID/model) resolved in `mlflow_uri` (default: $MLFLOW_TRACKING_URI, else the
    default sweep's store): the saved folder the registered pyfunc model holds."""
    if not name.startswith(MLFLOW_SCHEMES):
        return load_model(name)
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///runs/sweep/mlflow.db"
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise MetaXLError(f"no MLflow store at {uri} to find {name!r} in: pass --mlflow-uri "
                          "(the sweep's, e.g. sqlite:///runs/sweep/mlflow.db)")
    try:
        with tracking_uri(uri):
            local = Path(mlflow.artifacts.download_artifacts(name))
    except MlflowException as err:
        registered = [m.name for m in mlflow.MlflowClient(uri, uri).search_registered_models()]
        raise MetaXLError(f"cannot load {name!r} from {uri}: {err.message.splitlines()[0]}\n"
                          f"registered models there: {registered or 'none'} (--mlflow-uri sets "
                          "the store)") from None
    artifacts = mlflow.models.Model.load(local).flavors["python_function"]["artifacts"]
    return load_model(local / artifacts["model"]["path"])


def format_predictions(task: str, lines: list[str], predictions: list) -> list[str]:
    """Output lines for input `lines` and their predictions (see the module docstring)."""
    if task == "sentiment":
        return [f"{label}\t{line}" for line, label in zip(lines, predictions)]
    out = []
    for line, tags in zip(lines, predictions):
        out += [f"{word}\t{tag}" for word, tag in zip(line.split(), tags)] + [""]
    return out


def predict_lines(model: SavedModel, lines: list[str], progress: bool = True) -> list[str]:
    """Predict every line in chunks, with a progress bar when there is more than one chunk."""
    out = []
    with tqdm(total=len(lines), unit="line", desc="predicting", file=sys.stderr,
              disable=not progress or len(lines) <= CHUNK_LINES) as bar:
        for start in range(0, len(lines), CHUNK_LINES):
            chunk = lines[start:start + CHUNK_LINES]
            inputs = [line.split() for line in chunk] if model.task == "ner" else chunk
            out += format_predictions(model.task, chunk, model.predict(inputs))
            bar.update(len(chunk))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a saved model folder or an MLflow model URI "
                   "(models:/metaxl-ner-yor/1)")
    p.add_argument("--input", required=True, help="text file, UTF-8, one sentence per line")
    p.add_argument("--output", help="write here (atomically) instead of standard output")
    p.add_argument("--mlflow-uri", help="tracking store of a models:/ URI (default: "
                   "$MLFLOW_TRACKING_URI, else sqlite:///runs/sweep/mlflow.db)")
    args = p.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        output = None if args.output is None else Path(args.output)
        if output is not None and output.is_dir():
            raise MetaXLError(f"--output {output}: is a folder; name the file to write")
        if output is not None and not output.parent.is_dir():
            raise MetaXLError(f"--output {output}: the folder {output.parent} does not exist")
        lines = read_lines(args.input)
        model = open_model(args.model, args.mlflow_uri)
        out = predict_lines(model, lines)
    except MetaXLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = "\n".join(out) + "\n"
    if output is None:
        sys.stdout.write(text)
        return 0
    write_atomic(output, text)
    print(f"{len(lines)} lines -> {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
