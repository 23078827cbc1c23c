"""Downloads, the local model cache, and model-name resolution.

transfer   one file over HTTP: resume, redirects, checksums, timeouts, fsync'd atomic rename
published  the four published GPT-2 models (OpenAI's files, or the hub's safetensors)
repos      any GPT-2 repository on the Hugging Face hub, per revision
cache      what a name means (`resolve_model_path`), `download`, listing and removing
"""

from ..paths import home, models_root
from .cache import download, list_models, remove_model, resolve_model_path
from .published import HF_FILES, HF_REPOS, OPENAI_FILES, OPENAI_URL, ensure_model
from .repos import HF_URL, RepoRef, download_repo, ensure_repo, parse_repo
from .transfer import COMPLETE, RETRIES, fetch, first_retry_delay, is_offline

__all__ = [
    "COMPLETE",
    "HF_FILES",
    "HF_REPOS",
    "HF_URL",
    "OPENAI_FILES",
    "OPENAI_URL",
    "RETRIES",
    "RepoRef",
    "download",
    "download_repo",
    "ensure_model",
    "ensure_repo",
    "fetch",
    "first_retry_delay",
    "home",
    "is_offline",
    "list_models",
    "models_root",
    "parse_repo",
    "remove_model",
    "resolve_model_path",
]
