"""The MLflow pyfunc flavour of a saved model (`metaxl_core.saved_model`), logged as code
(MLflow's models-from-code) by `sweeps.mlflow_store.register_model`; the saved folder is the
artifact "model".

    model = mlflow.pyfunc.load_model("models:/metaxl-ner-yor/1")
    model.predict([["Ade", "lọ", "sí", "Abuja"]])         # NER: word lists -> tags per word
    model.unwrap_python_model().model                      # the SavedModel
"""

import mlflow


class MetaXLPyfunc(mlflow.pyfunc.PythonModel):
    """Word lists (NER) or texts (sentiment) in, tags or labels out."""

    def load_context(self, context):
        from metaxl_core.saved_model import load_model

        self.model = load_model(context.artifacts["model"])

    def predict(self, context, model_input, params=None):
        if hasattr(model_input, "iloc"):  # a DataFrame: its first column
            model_input = model_input.iloc[:, 0].tolist()
        return self.model.predict(list(model_input))


mlflow.models.set_model(MetaXLPyfunc())
