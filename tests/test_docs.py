"""The documentation cannot drift from the code: the site builds with every link resolved, the settings table is
the settings object's, the API page has a section for every route, and the README's `curl` examples print what
the README shows."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import httpx
import pytest

from app.settings import Settings
from commands import tool
from conftest import REPO
from server import ServerThread


def docs_reference():
    spec = importlib.util.spec_from_file_location("docs_reference", REPO / "scripts" / "docs_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_settings_table_is_what_the_settings_say():
    result = subprocess.run([sys.executable, "scripts/docs_reference.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_check_fails_when_a_setting_is_missing_documented_but_gone_or_its_default_differs():
    reference = docs_reference()
    page = reference.PAGE.read_text(encoding="utf-8")
    assert reference.rendered(page) == page
    missing = "\n".join(line for line in page.splitlines() if not line.startswith("| `ROBERTA_MAX_QUEUE`")) + "\n"
    gone = page.replace(reference.END, "| `ROBERTA_ONNX_NICE` | `--onnx-nice` | `0` | integer | gone |\n" + reference.END)
    default = page.replace("| `ROBERTA_MAX_BATCH_SIZE` | `--max-batch-size` | `32` |", "| `ROBERTA_MAX_BATCH_SIZE` | `--max-batch-size` | `16` |")
    for drifted in (missing, gone, default):
        assert drifted != page and reference.rendered(drifted) != drifted


def documented_routes() -> set[tuple[str, str]]:
    """Each `### `METHOD /path`` heading of docs/api.md (one heading may name several routes)."""
    routes = set()
    for heading in re.findall(r"^### (.+)$", (REPO / "docs" / "api.md").read_text(encoding="utf-8"), flags=re.M):
        routes.update(re.findall(r"`(GET|POST|PUT|DELETE|PATCH) (/[^`]*)`", heading))
    return routes


def test_the_api_page_has_a_section_for_every_route_and_no_other(exported_classifier, exported_mlm, exported_ner, exported_nli,
                                                                 exported_embedder, exported_reranker, exported_qa):
    every_task = Settings(classify_model=exported_classifier, fill_mask_model=exported_mlm,
                          models=f"ner={exported_ner},nli={exported_nli},embedder={exported_embedder},"
                                 f"reranker={exported_reranker},qa={exported_qa}")
    with ServerThread(every_task) as server:
        document = httpx.get(f"{server.url}/openapi.json").json()
        for page in ("/docs", "/redoc"):
            assert httpx.get(f"{server.url}{page}").status_code == 200
    served = {(method.upper(), path) for path, methods in document["paths"].items() for method in methods}
    served |= {("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json")}  # the document's own pages
    assert ("POST", "/token-classification") in served and ("POST", "/zero-shot-classification") in served
    assert ("POST", "/v1/embeddings") in served and ("POST", "/v1/rerank") in served
    documented = documented_routes()
    assert served - documented == set(), "routes without a section in docs/api.md"
    assert documented - served == set(), "sections in docs/api.md for routes the service does not have"


def test_the_site_builds_with_every_link_resolved(tmp_path):
    mkdocs = tool("mkdocs")
    quiet = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # the theme's banner about its future, not about this site
    result = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO, env=quiet,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def readme_examples() -> list[tuple[str, str]]:
    """(command, what the README shows after it) for every `curl` in the README's sh blocks."""
    examples = []
    for block in re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), flags=re.S):
        lines = block.splitlines()
        index = 0
        while index < len(lines):
            if not lines[index].startswith("curl "):
                index += 1
                continue
            command = lines[index]
            while command.endswith("\\"):
                index += 1
                command = command[:-1] + lines[index]
            shown = []
            while index + 1 < len(lines) and lines[index + 1].startswith("#"):
                index += 1
                shown.append(lines[index][1:].strip())
            examples.append((command, "".join(shown)))
            index += 1
    return examples


def close(actual, shown) -> bool:
    """Equal, floats to 1e-4."""
    if isinstance(shown, float) and isinstance(actual, (int, float)):
        return abs(actual - shown) <= 1e-4
    if isinstance(shown, list):
        return isinstance(actual, list) and len(actual) == len(shown) and all(map(close, actual, shown))
    if isinstance(shown, dict):
        return isinstance(actual, dict) and actual.keys() == shown.keys() and all(close(actual[k], shown[k]) for k in shown)
    return actual == shown


def run_curl(command: str, url: str) -> object:
    result = subprocess.run(["bash", "-c", command.replace("localhost:8000", url.removeprefix("http://"))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_the_readme_curl_examples_print_what_it_shows(default_exports, exported_ner, exported_nli, exported_embedder,
                                                      exported_reranker, exported_qa):
    tool("curl")
    examples = readme_examples()
    answered = [(command, shown) for command, shown in examples if not shown.startswith("keys:")]
    shaped = [(command, shown) for command, shown in examples if shown.startswith("keys:")]
    assert len(answered) >= 2 and len(shaped) >= 2 and all(shown for _, shown in examples)
    # As ./scripts/serve-default.sh serves them, at fp32: the README says that the precision a machine gets (bf16,
    # INT8) may move a score in the third decimal.
    embedded = Settings(classify_model=default_exports / "roberta-mini-sst2", fill_mask_model=default_exports / "roberta-mini-mlm",
                        backend="onnxruntime", precision="fp32")
    with ServerThread(embedded) as server:
        for command, shown in answered:
            actual = run_curl(command, server.url)
            assert close(actual, json.loads(shown)), f"{command}\nREADME: {shown}\nserved: {json.dumps(actual)}"
    # The tasks no embedded model does, on tiny models under the README's names: the answer's keys.
    tiny = f"ner={exported_ner},nli={exported_nli},embedder={exported_embedder},reranker={exported_reranker},qa={exported_qa}"
    with ServerThread(Settings(models=tiny)) as server:
        for command, shown in shaped:
            keys = set(re.findall(r'"(\w+)"', shown))
            actual = run_curl(command, server.url)
            items = actual if isinstance(actual, list) else [actual]
            assert items and all(set(item) == keys for item in items), f"{command}\nREADME: {shown}\nserved: {actual}"
