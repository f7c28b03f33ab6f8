"""Where a checkpoint comes from: a local directory, or a Hugging Face Hub repo.

A Hub repo id ``owner/name[@revision]`` is fetched with huggingface_hub into the
standard HF cache, keeping only the files the converter needs; pickled weights
(``*.bin``, ``*.pt``...) are never downloaded. ``HF_TOKEN``, ``HF_ENDPOINT``,
``HF_HUB_OFFLINE``, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_ETAG_TIMEOUT`` are
read when :func:`resolve_source` is called, not when this module is imported:
huggingface_hub freezes some of them at its own import time, so they are passed
to it explicitly.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.errors import DiskFull, EdgekitError, HubUnreachable, MissingFiles, SourceError, UnsupportedModel
from edgekit.progress import ProgressFn

from .hub_progress import HubProgress

if TYPE_CHECKING:
    from huggingface_hub import ModelInfo
    from huggingface_hub.errors import HfHubHTTPError

__all__ = ["NEEDED_PATTERNS", "Source", "parse_repo_id", "resolve_source"]

#: The only files fetched from a Hub repo (top level only, see ``SKIPPED_PATTERNS``).
NEEDED_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "README.md",
    "LICENSE*",
)
#: Never fetched even if a needed pattern matches: subfolders (other formats, "original/"
#: weights) and pickles, which can run arbitrary code when loaded.
SKIPPED_PATTERNS: tuple[str, ...] = ("*/*", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Pickles that trainers save next to safetensors weights; they are not weights.
_NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state")

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_TIMEOUT = 10.0  # seconds to wait for the Hub to answer (HF_HUB_ETAG_TIMEOUT overrides)
CONNECT_TIMEOUT = 5.0  # an unreachable Hub must fail fast
OFFLINE_HINT = (
    "Pass a local checkpoint directory instead, or set HF_HUB_OFFLINE=1 to use the HF cache "
    "if you downloaded it before."
)

_NAME = r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9_])?"
_REPO_RE = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>[^\s@]+))?")
_URL_RE = re.compile(rf"https?://(?:www\.)?(?:huggingface\.co|hf\.co)/(?P<repo>{_NAME}/{_NAME})(?:/tree/(?P<rev>\S+))?/?")
_CACHE_DIR_RE = re.compile(r"models--(?P<owner>[^/]+?)--(?P<name>[^/]+)$")
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Source:
    """A checkpoint directory on disk, and where it came from."""

    path: Path  # local directory holding the checkpoint files
    repo_id: str | None = None  # "owner/name" when from the Hub (or from an HF cache snapshot directory)
    revision: str | None = None  # the revision asked for ("@main", a tag, a sha), None for the default branch
    url: str | None = None  # e.g. https://huggingface.co/owner/name (follows HF_ENDPOINT)
    commit: str | None = None  # the commit sha the files come from, when known


@dataclass(frozen=True)
class _HubSettings:
    endpoint: str
    token: str | None
    cache_dir: Path
    offline: bool
    timeout: float


def parse_repo_id(text: str) -> tuple[str, str | None] | None:
    """Split ``owner/name[@revision]`` (or a huggingface.co URL) into (repo_id, revision); None if it isn't one."""
    text = text.strip()
    for pattern in (_URL_RE, _REPO_RE):
        match = pattern.fullmatch(text)
        if match:
            repo, rev = match["repo"], match["rev"]
            if "--" in repo or ".." in repo or repo.endswith(".git"):
                return None  # forbidden in Hub repo ids
            return repo, (rev.rstrip("/") if rev else None)
    return None


def resolve_source(src: str | Path, *, progress: ProgressFn | None = None) -> Source:
    """Turn SRC (a checkpoint directory or ``owner/name[@revision]``) into a local directory.

    An existing directory is returned as is (its contents are checked later). A Hub repo is
    downloaded into the HF cache (only :data:`NEEDED_PATTERNS`), or taken from the cache when
    offline or when the Hub can't be reached. Download progress goes to ``progress("download",
    bytes_done, bytes_total)``.

    Raises:
        SourceError: SRC is neither a directory nor a repo id; repo, revision or access problems.
        HubUnreachable: the Hub can't be reached (or offline mode is on) and the repo isn't cached.
        UnsupportedModel: the repo only has pickled PyTorch weights.
        MissingFiles: the repo has none of the files a conversion needs.
    """
    text = str(src)
    path = Path(text).expanduser()
    if path.is_dir():
        return _local(path.resolve())
    if path.exists():
        raise SourceError(
            f"{text} is a file, not a checkpoint directory",
            hint="Pass the directory that holds config.json and the *.safetensors weights, or a Hub repo id "
            "like owner/name.",
        )
    parsed = None if text.startswith((".", "/", "~")) or os.sep + os.sep in text else parse_repo_id(text)
    if parsed is None:
        raise SourceError(
            f"{text} is neither an existing directory nor a Hugging Face repo id",
            hint="Pass a local checkpoint directory, or a Hub repo id like Qwen/Qwen2.5-0.5B[@revision].",
        )
    return _from_hub(*parsed, progress=progress)


# -- local directories --------------------------------------------------------------------------


def _local(path: Path) -> Source:
    # A snapshot inside the HF cache still knows its repo: keep it for the GGUF metadata.
    parent = path.parent
    if parent.name == "snapshots" and _COMMIT_RE.fullmatch(path.name):
        match = _CACHE_DIR_RE.search(str(parent.parent))
        if match:
            repo_id = f"{match['owner']}/{match['name']}"
            return Source(path, repo_id, None, f"{_settings().endpoint}/{repo_id}", path.name)
    return Source(path)


# -- the Hub ------------------------------------------------------------------------------------


def _settings() -> _HubSettings:
    env = os.environ
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not cache:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
        cache = os.path.join(home, "hub")
    try:
        timeout = float(env.get("HF_HUB_ETAG_TIMEOUT") or DEFAULT_TIMEOUT)
    except ValueError:
        timeout = DEFAULT_TIMEOUT
    offline = any(
        (env.get(name) or "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return _HubSettings(
        endpoint=(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
        token=env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None,  # None: the saved login, if any
        cache_dir=Path(os.path.expandvars(cache)).expanduser(),
        offline=offline,
        timeout=max(timeout, 0.1),
    )


def _from_hub(repo_id: str, revision: str | None, *, progress: ProgressFn | None) -> Source:
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    s = _settings()
    url = f"{s.endpoint}/{repo_id}"
    if s.offline:
        folder = _from_cache(repo_id, revision, s, reason=None)
    else:
        # Ask for the repo's file list first, with a short timeout: huggingface_hub's own first
        # request has none, and a Hub that hangs must fail as fast as one that refuses.
        api = HfApi(endpoint=s.endpoint, token=s.token)
        timeout = httpx2.Timeout(s.timeout, connect=min(s.timeout, CONNECT_TIMEOUT))
        try:
            info = api.model_info(repo_id, revision=revision, timeout=timeout, files_metadata=True)
        except (httpx2.TransportError, OfflineModeIsEnabled) as exc:
            folder = _from_cache(repo_id, revision, s, reason=_reason(exc, s))
        except HfHubHTTPError as exc:
            if exc.response is None or exc.response.status_code < 500:
                raise _hub_error(exc, repo_id, revision, s) from None
            folder = _from_cache(repo_id, revision, s, reason=f"the Hub answered HTTP {exc.response.status_code}")
        except ValueError as exc:  # HFValidationError: not a valid repo id after all
            raise SourceError(f"{repo_id} is not a valid Hugging Face repo id ({exc})") from None
        else:
            names = [sibling.rfilename for sibling in info.siblings or []]
            _check_listing(repo_id, names)
            folder = _download(repo_id, revision, s, progress, _bytes_to_fetch(repo_id, info, s))
    commit = folder.name if _COMMIT_RE.fullmatch(folder.name) else None
    return Source(folder, repo_id, revision, url, commit)


def _check_listing(repo_id: str, names: list[str]) -> None:
    """Refuse pickle-only repos and repos with nothing to convert, before downloading anything."""
    top = [name for name in names if "/" not in name]
    if not any(name.endswith(".safetensors") for name in top):
        pickles = [n for n in top if n.endswith(PICKLE_SUFFIXES) and not n.startswith(_NOT_WEIGHTS)]
        if pickles:
            kind = ".bin" if all(n.endswith(".bin") for n in pickles) else "pickle (.bin/.pt)"
            raise UnsupportedModel(
                f"{repo_id} has only PyTorch {kind} weights ({', '.join(sorted(pickles)[:3])}); edgekit never "
                "unpickles them because pickle files can run arbitrary code",
                hint="Convert them to safetensors first (e.g. with the `safetensors` convert space) or pick a "
                "safetensors revision.",
            )
    missing = [need for need, present in (("config.json", "config.json" in top),
                                          ("*.safetensors weights", any(n.endswith(".safetensors") for n in top)))
               if not present]
    if missing:
        ggufs = [n for n in names if n.endswith(".gguf")]
        raise MissingFiles(
            f"{repo_id} has no {' and no '.join(missing)}, so it is not a checkpoint edgekit can convert",
            hint=f"It already holds GGUF files ({', '.join(ggufs[:2])}); download one and use it directly."
            if ggufs else "Check the repo id; edgekit converts Hugging Face transformers checkpoints.",
        )


def _bytes_to_fetch(repo_id: str, info: ModelInfo, s: _HubSettings) -> int:
    """Bytes of the needed files not yet in the cache: the download bar's total from the start.

    huggingface_hub's own byte total only grows as each file starts, which makes bars jump back.
    """
    from huggingface_hub.utils import filter_repo_objects

    if not info.sha:
        return 0
    snapshot = s.cache_dir / f"models--{repo_id.replace('/', '--')}" / "snapshots" / info.sha
    wanted = filter_repo_objects(
        info.siblings or [], allow_patterns=list(NEEDED_PATTERNS), ignore_patterns=list(SKIPPED_PATTERNS),
        key=lambda sibling: sibling.rfilename,
    )
    return sum(sib.size or 0 for sib in wanted if not (snapshot / sib.rfilename).exists())


def _snapshot(repo_id: str, revision: str | None, s: _HubSettings, **kwargs: object) -> Path:
    from huggingface_hub import snapshot_download

    folder = snapshot_download(
        repo_id,
        revision=revision,
        cache_dir=s.cache_dir,
        endpoint=s.endpoint,
        token=s.token,
        allow_patterns=list(NEEDED_PATTERNS),
        ignore_patterns=list(SKIPPED_PATTERNS),
        etag_timeout=s.timeout,
        **kwargs,  # type: ignore[arg-type]
    )
    return Path(folder)


def _download(
    repo_id: str, revision: str | None, s: _HubSettings, progress: ProgressFn | None, expected: int
) -> Path:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, IncompleteSnapshotError, LocalEntryNotFoundError

    bars = HubProgress(progress, expected)
    try:
        folder = _snapshot(repo_id, revision, s, tqdm_class=bars.tqdm_class(), max_workers=4)
    except IncompleteSnapshotError:
        raise HubUnreachable(
            f"lost the Hugging Face Hub while fetching {repo_id}, and the cached copy is incomplete",
            hint="Run the command again when the Hub is reachable; it resumes where it stopped.",
        ) from None
    except LocalEntryNotFoundError as exc:
        raise HubUnreachable(
            f"lost the Hugging Face Hub while fetching {repo_id} ({_reason(exc.__cause__ or exc, s)})",
            hint=OFFLINE_HINT,
        ) from None
    except httpx2.TransportError as exc:
        raise HubUnreachable(
            f"the download of {repo_id} broke off ({_reason(exc, s)})",
            hint="Run the command again; finished files are kept in the HF cache and not downloaded twice.",
        ) from None
    except HfHubHTTPError as exc:
        raise _hub_error(exc, repo_id, revision, s) from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(
                f"the disk holding the HF cache ({s.cache_dir}) is full while downloading {repo_id}",
                hint="Free some space, or point HF_HUB_CACHE at a bigger disk.",
            ) from None
        raise SourceError(f"downloading {repo_id} failed: {str(exc).splitlines()[0]}",
                          hint="Run the command again.") from None
    bars.finish()
    if not folder.is_dir():
        raise MissingFiles(f"{repo_id} has none of the files a conversion needs (config.json, *.safetensors)")
    return folder


def _from_cache(repo_id: str, revision: str | None, s: _HubSettings, *, reason: str | None) -> Path:
    """The cached snapshot, when the Hub is off limits; ``reason`` says why (None: offline mode)."""
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        folder = _snapshot(repo_id, revision, s, local_files_only=True)
    except IncompleteSnapshotError:
        why = "HF_HUB_OFFLINE is set" if reason is None else f"the Hub can't be reached ({reason})"
        raise HubUnreachable(
            f"the cached copy of {repo_id} is incomplete (an earlier download stopped) and {why}",
            hint="Run the command again with network access to finish the download, or pass a local checkpoint "
            "directory.",
        ) from None
    except LocalEntryNotFoundError:
        at = f"@{revision}" if revision else ""
        if reason is None:
            raise HubUnreachable(
                f"{repo_id}{at} is not in the Hugging Face cache ({s.cache_dir}) and HF_HUB_OFFLINE is set",
                hint="Unset HF_HUB_OFFLINE to download it, or pass a local checkpoint directory.",
            ) from None
        raise HubUnreachable(f"can't reach the Hugging Face Hub for {repo_id}{at} ({reason})", hint=OFFLINE_HINT) from None
    if not folder.is_dir():  # cached with none of the needed files
        raise MissingFiles(f"{repo_id} has none of the files a conversion needs (config.json, *.safetensors)")
    return folder


def _reason(exc: BaseException, s: _HubSettings) -> str:
    """A few words on why a connection failed: 'connection refused', 'timed out after 5 s'..."""
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return "offline mode is on"
    if isinstance(exc, httpx2.TimeoutException):
        seconds = min(s.timeout, CONNECT_TIMEOUT) if isinstance(exc, httpx2.ConnectTimeout) else s.timeout
        return f"no answer within {seconds:g} s"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    return text[:1].lower() + text[1:]


def _hub_error(exc: HfHubHTTPError, repo_id: str, revision: str | None, s: _HubSettings) -> EdgekitError:
    """Map a huggingface_hub HTTP error to one clear line."""
    from huggingface_hub.errors import (
        DisabledRepoError,
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    url = f"{s.endpoint}/{repo_id}"
    status = exc.response.status_code if exc.response is not None else None
    token_hint = "set HF_TOKEN to a token that can read it" if s.token is None else "check that HF_TOKEN can read it"
    if isinstance(exc, GatedRepoError):
        who = "no Hugging Face token is set" if s.token is None else "the token in HF_TOKEN has no access"
        return SourceError(f"{repo_id} is a gated repo and {who}",
                           hint=f"Accept its terms at {url} and set HF_TOKEN to a token of that account.")
    if isinstance(exc, RevisionNotFoundError):
        return SourceError(f"revision {revision!r} was not found in {repo_id}",
                           hint="Use an existing branch, tag or commit sha after the @.")
    if isinstance(exc, RepositoryNotFoundError):
        return SourceError(f"{repo_id} was not found on the Hugging Face Hub ({s.endpoint})",
                           hint=f"Check the repo id; if the repo is private or gated, {token_hint}.")
    if isinstance(exc, DisabledRepoError):
        return SourceError(f"{repo_id} has been disabled on the Hugging Face Hub")
    if isinstance(exc, RemoteEntryNotFoundError):
        return SourceError(f"a file of {repo_id} disappeared from the Hub during the download",
                           hint="Run the command again, or pin a commit with @<sha>.")
    if status == 401:
        return SourceError(f"the Hugging Face Hub rejected the token for {repo_id} (HTTP 401)",
                           hint="Set HF_TOKEN to a valid token, or unset it for public repos.")
    if status == 403:
        return SourceError(f"the Hugging Face Hub refused access to {repo_id} (HTTP 403)",
                           hint="Check that HF_TOKEN has read access to this repo.")
    return SourceError(f"the Hugging Face Hub answered HTTP {status} for {repo_id}", hint="Try again later.")
