"""The MLflow pyfunc flavour of a saved model folder (`metaxl_core.saved_model`, a standard Hugging
Face model), logged as code (MLflow's models-from-code) by `sweeps.mlflow_store.register_model`
with the folder as its artifact "model". It imports only torch, transformers and safetensors, so
`mlflow models serve` runs it from the registry alone.

    model = mlflow.pyfunc.load_model("models:/metaxl-ner-yor/1")
    model.predict(["Ade lọ sí Abuja"])               # NER: sentences, split at whitespace...
    model.predict([["Ade", "lọ", "sí", "Abuja"]])     # ...or word lists
    # -> [[{"word": "Ade", "tag": "B-PER"}, {"word": "lọ", "tag": "O"}, ...]]
    model.predict(["Mo fẹ́ràn rẹ̀"])                    # sentiment: texts -> ["positive"]

Served: POST /invocations {"inputs": [...]} with the same inputs, answered {"predictions": [...]}.
Each word is tagged by its first subword, as `metaxl_core.predict` does; words past
max_seq_length subwords (the tokenizer's model_max_length), or that yield no subword, are `O`.
"""

import json
from pathlib import Path

import mlflow

BATCH = 32  # inputs per forward pass


class MetaXLPyfunc(mlflow.pyfunc.PythonModel):
    """Sentences or word lists (NER) or texts (sentiment) in, tagged words or labels out."""

    def load_context(self, context):
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForTokenClassification, AutoTokenizer

        folder = Path(context.artifacts["model"])
        self.task = json.loads((folder / "metaxl.json").read_text(encoding="utf-8"))["task"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        if self.task == "ner":
            self.model = AutoModelForTokenClassification.from_pretrained(folder).eval()
        else:
            self.model = AutoModel.from_pretrained(folder).eval()
            self.head = load_file(folder / "classifier.safetensors")

    def predict(self, context, model_input: list[str | list[str]], params=None):
        predict = self._tag if self.task == "ner" else self._label
        return [out for start in range(0, len(model_input), BATCH)
                for out in predict(model_input[start:start + BATCH])]

    def _tag(self, inputs: list) -> list[list[dict]]:
        import torch

        sentences = [text.split() if isinstance(text, str) else list(text) for text in inputs]
        kept = [words for words in sentences if words]
        tags = [["O"] * len(words) for words in kept]
        if kept:
            batch = self.tokenizer(kept, is_split_into_words=True, truncation=True, padding=True,
                                   return_tensors="pt")
            with torch.inference_mode():
                best = self.model(**batch).logits.argmax(-1).tolist()
            for i, row in enumerate(best):
                for word, label in reversed(list(zip(batch.word_ids(i), row))):  # first subwords last
                    if word is not None:
                        tags[i][word] = self.model.config.id2label[label]
        tagged = iter(tags)
        return [[{"word": w, "tag": t} for w, t in zip(words, next(tagged))] if words else []
                for words in sentences]

    def _label(self, texts: list[str]) -> list[str]:
        import torch

        batch = self.tokenizer(list(texts), truncation=True, padding=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = pooled @ self.head["weight"].T + self.head["bias"]
        return [self.model.config.id2label[i] for i in logits.argmax(-1).tolist()]


mlflow.models.set_model(MetaXLPyfunc())
