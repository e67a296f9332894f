"""Classification over an index: X-MoRe (:class:`Classifier`), its inputs, and ``retrieval eval``.

Imports ``query`` (an opened :class:`~retrieval.query.Index`), ``methods``, ``embed`` and ``corpus``.
"""
from .classifier import DEFAULT_TEMPLATES, Classifier, Result
from .evaluate import eval_classification, eval_retrieval, format_table, recall_at
from .inputs import check_classes, check_template, expand_images, read_classes, read_labels

__all__ = ["Classifier", "Result", "DEFAULT_TEMPLATES", "check_classes", "check_template", "read_classes", "read_labels",
           "expand_images", "eval_retrieval", "eval_classification", "format_table", "recall_at"]
