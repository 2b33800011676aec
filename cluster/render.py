"""Write cluster/'s deployable files with one site's values.

    python cluster/render.py SITE.yaml OUT_DIR

SITE.yaml has the keys of cluster/site.example.yaml (any subset: a missing key keeps
the example's value). OUT_DIR receives kuberay/, jobs/, aws/, gcp/ and docker/, the
files of those folders of cluster/ with the site's values in place; deploy from there
(cluster/README.md). Standard library and PyYAML only (Ray brings PyYAML), so the
tests run it wherever they run; no kustomize or Helm binary needed.

The files under cluster/ are the templates, and hold exactly site.example.yaml's
values: rendering the example reproduces them byte for byte, and they stay valid
manifests on their own. Two kinds of places take a site value:

- a line marked ``# site: KEY``: its YAML value becomes the site's (a string, or a
  mapping written as a flow mapping);
- a value inside longer text (an image name, a storage prefix inside URIs, a region
  inside a DNS name, the CUDA build inside an image tag and an index URL): every
  occurrence of the example's text, in values and comments, in :data:`SUBSTRINGS`.

Comments survive (text is edited, never re-dumped), and a template that no longer
holds an example value fails the render instead of silently ignoring the site's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "site.example.yaml")
FOLDERS = ("kuberay", "jobs", "aws", "gcp", "docker")

# Site keys whose example value occurs inside longer text: each pattern filled with
# the example's value is replaced by the pattern filled with the site's. The CUDA
# build is matched in context only: Deep Learning VM image names contain it too.
SUBSTRINGS: dict[str, tuple[str, ...]] = {
    "image": ("{}",),
    "storage": ("{}",),
    "gpu.cuda": ("-py311-{}", "download.pytorch.org/whl/{}"),
    "aws.region": ("{}",),
    "aws.efs_id": ("{}",),
    "gcp.region": ("{}",),
    "gcp.filestore": ("{}",),
}

# "key: value  # site: KEY" (also as the first key of a list item).
MARKED = re.compile(
    r"^(?P<head>\s*(?:-\s+)?[\w./-]+:[ ]+)(?P<value>[^#\s][^#]*?)"
    r"(?P<tail>[ ]+#[ ]site:[ ](?P<key>[\w.]+)[ ]*)$"
)

_DNS_1123 = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
_NO_SPACE_OR_QUOTE = r"[^\s'\"]+"


def _string_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _matches(pattern: str) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and re.fullmatch(pattern, value) is not None


# What each site value may be; the message says what was expected.
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "image": (
        _matches(r"[\w.-]+(/[\w.-]+)+(:[\w.-]+|@sha256:[0-9a-f]{64})"),
        "an image in a registry: REGISTRY/NAME:TAG",
    ),
    "storage": (
        _matches(rf"([a-z][a-z0-9+.-]*://{_NO_SPACE_OR_QUOTE}|/{_NO_SPACE_OR_QUOTE})(?<!/)"),
        "a URI (s3://bucket/prefix, gs://...) or an absolute path, no trailing /",
    ),
    "service_account.name": (_matches(_DNS_1123), "a Kubernetes name (lowercase, digits, -)"),
    "service_account.annotations": (_string_map, "a mapping of strings"),
    "gpu.cuda": (_matches(r"cu\d{3}"), "a CUDA build tag such as cu128"),
    "gpu.node_selector": (_string_map, "a mapping of strings"),
    "kubernetes.storage_class": (_matches(_DNS_1123), "a storage class name"),
    "aws.region": (_matches(r"[a-z]{2}(-[a-z]+)+-\d"), "an AWS region such as us-west-2"),
    "aws.image_id": (
        _matches(r"ami-[0-9a-f]{8,17}|resolve:ssm:/\S+"),
        "an AMI ID (ami-...) or resolve:ssm:/PARAMETER",
    ),
    "aws.gpu_instance_type": (
        _matches(r"[gp]\d[a-z0-9-]*\.[a-z0-9]+"),
        "a GPU instance type (g5.2xlarge, g6.xlarge, p4d.24xlarge...)",
    ),
    "aws.efs_id": (_matches(r"fs-[0-9a-f]{8,17}"), "an EFS file system ID (fs-...)"),
    "gcp.project_id": (_matches(r"[a-z][a-z0-9-]{4,28}[a-z0-9]"), "a GCP project ID"),
    "gcp.region": (_matches(r"[a-z]+-[a-z]+\d+"), "a GCP region such as us-central1"),
    "gcp.gpu_accelerator": (_matches(r"nvidia-[a-z0-9-]+"), "an accelerator type (nvidia-...)"),
    "gcp.gpu_image": (
        _matches(r"projects/[\w-]+/global/images/(family/)?[\w-]+"),
        "projects/PROJECT/global/images/[family/]NAME",
    ),
    "gcp.filestore": (_matches(r"[\w.-]+:/[\w./-]*"), "an NFS share: HOST:/PATH"),
}


def flatten(data: Any, where: str, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``; mappings that are values
    (annotations, node selectors) stay whole.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: {prefix or 'the file'}: expected a mapping, got {data!r}")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and path not in CHECKS:
            flat.update(flatten(value, where, f"{path}."))
        else:
            flat[path] = value
    return flat


def load_site(path: str | None) -> dict[str, Any]:
    """The example's values, overridden by the site file's (checked)."""
    with open(EXAMPLE) as f:
        values = flatten(yaml.safe_load(f), EXAMPLE)
    if path is None:
        return values
    with open(path) as f:
        site = flatten(yaml.safe_load(f) or {}, path)
    unknown = sorted(set(site) - set(CHECKS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; the keys are those of {EXAMPLE}")
    for key, value in site.items():
        check, expected = CHECKS[key]
        if not check(value):
            raise ValueError(f"{path}: {key}: expected {expected}, got {value!r}")
    return {**values, **site}


def _yaml_value(value: Any) -> str:
    """``value`` as the text after ``key: `` on one line."""
    if isinstance(value, Mapping):
        return json.dumps(dict(value)) if value else "{}"  # JSON is a YAML flow mapping
    if yaml.safe_load(f"k: {value}") == {"k": value}:
        return value
    return json.dumps(value)


def render_text(
    text: str, example: Mapping[str, Any], site: Mapping[str, Any], used: set[str]
) -> str:
    """One template's text with the site's values; records the keys it met in ``used``."""
    swaps = {
        pattern.format(example[key]): (key, pattern.format(site[key]))
        for key, patterns in SUBSTRINGS.items()
        for pattern in patterns
    }
    # One pass, longest first: a site value is never rewritten by another rule.
    found = re.compile("|".join(re.escape(old) for old in sorted(swaps, key=len, reverse=True)))

    def swap(match: re.Match[str]) -> str:
        key, new = swaps[match.group()]
        used.add(key)
        return new

    lines = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        marked = MARKED.match(body)
        if marked is None:
            lines.append(found.sub(swap, line))
            continue
        key = marked["key"]
        if key not in CHECKS:
            raise ValueError(f"unknown site key in a template: {body.strip()!r}")
        if yaml.safe_load(f"k: {marked['value']}") != {"k": example[key]}:
            raise ValueError(
                f"template line {body.strip()!r} does not hold site.example.yaml's {key}: "
                f"{example[key]!r}"
            )
        used.add(key)
        value = marked["value"] if site[key] == example[key] else _yaml_value(site[key])
        lines.append(f"{marked['head']}{value}{marked['tail']}{line[len(body) :]}")
    return "".join(lines)


def templates(src: str = HERE) -> list[str]:
    """The rendered files, relative to ``src``."""
    return sorted(
        os.path.join(folder, name)
        for folder in FOLDERS
        for name in os.listdir(os.path.join(src, folder))
        if not name.startswith(".") and os.path.isfile(os.path.join(src, folder, name))
    )


def render(site: Mapping[str, Any], out_dir: str, src: str = HERE) -> list[str]:
    """Write every template of ``src`` with ``site``'s values under ``out_dir``; returns
    the paths written. ``site`` is :func:`load_site`'s result.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.commonpath([out_dir, os.path.abspath(src)]) == os.path.abspath(src):
        raise ValueError(f"{out_dir}: inside {src}, the templates; render somewhere else")
    example = load_site(None)
    used: set[str] = set()
    rendered = {}
    for rel in templates(src):
        with open(os.path.join(src, rel)) as f:
            text = render_text(f.read(), example, site, used)
        if rel.endswith((".yaml", ".yml")):
            yaml.safe_load(text)  # a value that breaks the YAML fails here, not in kubectl
        rendered[rel] = text
    unused = sorted(set(CHECKS) - used)
    if unused:
        raise ValueError(f"no template holds the example's value of {unused}; fix the templates")
    written = []
    for rel, text in rendered.items():
        path = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """The command line: render, then say which values are still the example's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", help="the site file (keys of cluster/site.example.yaml)")
    parser.add_argument("out_dir", help="where kuberay/, jobs/, aws/, gcp/, docker/ go")
    args = parser.parse_args(argv)
    try:
        site = load_site(args.site)
        written = render(site, args.out_dir)
    except (OSError, ValueError, yaml.YAMLError) as err:
        print(f"render.py: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} files under {args.out_dir}")
    example = load_site(None)
    kept = [key for key in CHECKS if site[key] == example[key]]
    if kept:
        print(f"still site.example.yaml's values (fine only if they fit your site): {kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
