"""Drive yaml-language-server over LSP stdio against the packaged plan schema (see check-editor-schema)."""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SERVER_VERSION = "1.25.0"
TIMEOUT = 30.0
EXIT_FAILED, EXIT_CANNOT_RUN = 1, 3

# A plan that breaks rules the schema words for people (errorMessage/patternErrorMessage).
BAD_PLAN = """\
version: 2
name: "bad name!"
roots:
  input: {}
mounts:
  - name: tmp
    root: input
    target: /abs/tmp
    type: tmpfs
    attrs: [noatime, relatime]
    mountpoint: {kind: file}
"""
# Schema keyword -> the JSON pointer of the message each broken line above must show.
BAD_EXPECTED = {
    "version 2": "/properties/version/errorMessage",
    "name 'bad name!'": "/properties/name/patternErrorMessage",
    "target /abs/tmp": "/$defs/mount/properties/target/patternErrorMessage",
    "two atime modes": "/$defs/mount/properties/attrs/allOf/0/errorMessage",
    "kind: file on tmpfs": "/$defs/mount/allOf/0/then/properties/mountpoint/properties/kind/errorMessage",
}


class CannotRun(Exception):
    """The check could not be run here (no npm, no server answer): not a schema failure."""


class Lsp:
    """A minimal LSP client over a child's stdio: requests, notifications, server requests answered."""

    def __init__(self, argv: list[str], settings: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.settings = settings
        self.inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        out = self.proc.stdout
        while True:
            length = None
            while (line := out.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("ascii").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if length is None:
                return
            self.inbox.put(json.loads(out.read(length)))

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self._send({"method": method, "params": params})

    def request(self, method: str, params: dict[str, Any]) -> Any:
        self.next_id += 1
        self._send({"id": self.next_id, "method": method, "params": params})
        reply = self.wait(lambda m: m.get("id") == self.next_id and "method" not in m, f"reply to {method}")
        if "error" in reply:
            raise CannotRun(f"{method} failed: {reply['error']}")
        return reply.get("result")

    def wait(self, match: Any, what: str) -> dict[str, Any]:
        """The next message that ``match``es, answering the server's own requests meanwhile."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                message = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise CannotRun(f"no {what} from yaml-language-server within {TIMEOUT:g}s") from None
            if "method" in message and "id" in message:  # a request from the server
                result: Any = None
                if message["method"] == "workspace/configuration":
                    result = [self.settings.get(item.get("section", ""), None) for item in message["params"]["items"]]
                self._send({"id": message["id"], "result": result})
                continue
            if match(message):
                return message

    def close(self) -> None:
        try:
            self.request("shutdown", {})
            self.notify("exit", {})
            self.proc.wait(timeout=5)
        except (CannotRun, OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def install_server(cache: Path, version: str, verbose: bool) -> Path:
    """yaml-language-server@version under ``cache`` (installed by npm on first use)."""
    server = cache / "node_modules" / "yaml-language-server" / "bin" / "yaml-language-server"
    stamp = cache / "node_modules" / "yaml-language-server" / "package.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("version") == version:
        return server
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        raise CannotRun("node and npm are needed to install yaml-language-server (apt-get install nodejs npm)")
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--silent", f"yaml-language-server@{version}"]
    if verbose:
        print("+", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not server.exists():
        raise CannotRun(f"npm install yaml-language-server@{version} failed: {done.stderr.strip()[-500:]}")
    return server


def schema_messages(schema: dict[str, Any]) -> dict[str, str]:
    out = {}
    for label, pointer in BAD_EXPECTED.items():
        node: Any = schema
        for part in pointer.lstrip("/").split("/"):
            node = node[int(part)] if isinstance(node, list) else node[part]
        out[label] = node
    return out


def diagnostics(lsp: Lsp, path: Path, text: str, version: int) -> list[dict[str, Any]]:
    uri = path.as_uri()
    lsp.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "yaml", "version": version, "text": text}})
    message = lsp.wait(
        lambda m: m.get("method") == "textDocument/publishDiagnostics" and m["params"]["uri"] == uri,
        f"diagnostics for {path.name}",
    )
    return list(message["params"]["diagnostics"])


def run_checks(args: argparse.Namespace) -> list[str]:
    """Every check's failure, as a sentence; prints what it sees on the way."""
    t0 = time.monotonic()
    server = install_server(Path(args.cache), args.server_version, args.verbose)
    t_install = time.monotonic() - t0
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mountplan-editor-") as tmp:
        # The schema exactly as docs/editors.md has users install it.
        installed = subprocess.run(
            [sys.executable, "-m", "mountplan", "schema", "--install", os.path.join(tmp, "schema")],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        schema = json.loads(Path(installed).read_text())
        modeline = f"# yaml-language-server: $schema={installed}\n"
        node = shutil.which("node") or "node"
        settings = {"yaml": {"validate": True, "hover": True, "completion": True, "schemaStore": {"enable": False}}}
        lsp = Lsp([node, str(server), "--stdio"], settings)
        try:
            lsp.request("initialize", {
                "processId": os.getpid(), "rootUri": Path(tmp).as_uri(), "workspaceFolders": None,
                "capabilities": {
                    "workspace": {"configuration": True},
                    "textDocument": {"hover": {"contentFormat": ["markdown", "plaintext"]},
                                     "publishDiagnostics": {}},
                },
            })
            lsp.notify("initialized", {})
            lsp.notify("workspace/didChangeConfiguration", {"settings": settings})

            version = 0
            for plan in sorted((REPO / "plans").glob("*.yaml")):
                lines = plan.read_text().splitlines(keepends=True)
                body = "".join(line for line in lines if not line.startswith("# yaml-language-server:"))
                version += 1
                found = diagnostics(lsp, Path(tmp) / plan.name, modeline + body, version)
                status = "ok" if not found else "FAIL"
                print(f"good plan {plan.name}: {len(found)} diagnostics [{status}]")
                for d in found:
                    print(f"    line {d['range']['start']['line'] + 1}: {d['message']}")
                if found:
                    failures.append(f"plans/{plan.name} got {len(found)} diagnostics")

            version += 1
            bad_path = Path(tmp) / "bad.yaml"
            found = diagnostics(lsp, bad_path, modeline + BAD_PLAN, version)
            shown = [d["message"] for d in found]
            print(f"bad plan: {len(found)} diagnostics")
            for d in found:
                print(f"    line {d['range']['start']['line'] + 1}: {d['message']}")
            for label, wanted in schema_messages(schema).items():
                ok = any(wanted in message for message in shown)
                print(f"  friendly message for {label}: {'ok' if ok else 'FAIL'} ({wanted!r})")
                if not ok:
                    failures.append(f"bad plan: no diagnostic says {wanted!r} ({label})")
            raw = [m for m in shown if "does not match the pattern" in m or "^" in m]
            print(f"  raw regular expressions shown: {len(raw)} [{'ok' if not raw else 'FAIL'}]")
            failures += [f"bad plan: a raw pattern reached the user: {m!r}" for m in raw]

            # Hover over the top-level `name:` key: the schema's description of it.
            lines = (modeline + BAD_PLAN).splitlines()
            line = next(i for i, text in enumerate(lines) if text.startswith("name:"))
            hover = lsp.request("textDocument/hover", {"textDocument": {"uri": bad_path.as_uri()},
                                                       "position": {"line": line, "character": 1}})
            contents = (hover or {}).get("contents", "")
            text = contents.get("value", "") if isinstance(contents, dict) else json.dumps(contents)
            wanted = schema["properties"]["name"]["markdownDescription"].split(";")[0]
            ok = wanted in text
            print(f"hover on `name:`: {'ok' if ok else 'FAIL'} ({text.splitlines()[0] if text else 'nothing'!r}...)")
            if not ok:
                failures.append(f"hover on `name:` does not show the schema's description ({wanted!r}); got {text!r}")
        finally:
            lsp.close()
    took = time.monotonic() - t0
    print(f"took {took:.1f}s ({t_install:.1f}s to find or install yaml-language-server {args.server_version})")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    default_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mountplan" / "yaml-language-server"
    parser.add_argument("--cache", default=str(default_cache), help="where npm installs the server (default: %(default)s)")
    parser.add_argument("--server-version", default=SERVER_VERSION, help="yaml-language-server version (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    try:
        failures = run_checks(args)
    except CannotRun as exc:
        print(f"check-editor-schema: cannot run: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    print("editor schema check: " + ("passed" if not failures else f"{len(failures)} failure(s)"))
    return EXIT_FAILED if failures else 0


if __name__ == "__main__":
    sys.exit(main())
