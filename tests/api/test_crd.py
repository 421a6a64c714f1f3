"""The CRD is generated from datamix.schema, structural, bounded and described."""

from __future__ import annotations

from typing import Any

from datamix.crd import CRD_FILES, render_crd
from datamix.schema import crd_manifest


def test_committed_crds_are_up_to_date() -> None:
    expected = render_crd()
    for path in CRD_FILES:
        assert path.read_text() == expected, f"{path} is stale: run `datamix crd --write`"


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, schema)]
    for name, child in schema.get("properties", {}).items():
        nodes += walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        nodes += walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        nodes += walk(schema["additionalProperties"], f"{path}{{}}")
    return nodes


def root() -> dict[str, Any]:
    version = crd_manifest()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    return version["schema"]["openAPIV3Schema"]


def test_schema_is_structural() -> None:
    for path, node in walk(root()):
        untyped = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        assert "type" in node or untyped, f"{path} has no type"
        for forbidden in ("oneOf", "not", "allOf"):
            assert forbidden not in node, f"{path} uses {forbidden}"
        if "anyOf" in node:  # only allowed for int-or-string, without types of its own being wider
            assert node.get("x-kubernetes-int-or-string"), path


def test_every_field_is_described_and_bounded() -> None:
    for path, node in walk(root()):
        if path.startswith(".metadata") or path.endswith("{}") or path.endswith("[]"):
            continue
        assert node.get("description"), f"{path} has no description"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path} has no maxItems"
        if node.get("type") == "string" and path.startswith(".spec"):
            assert {"maxLength", "enum"} & node.keys(), f"{path} has no maxLength"


def test_rules_carry_messages() -> None:
    rules = [r for _, node in walk(root()) for r in node.get("x-kubernetes-validations", [])]
    assert len(rules) >= 10
    assert all(r.get("message") for r in rules)


def test_names_and_columns() -> None:
    crd = crd_manifest()
    names = crd["spec"]["names"]
    assert (crd["spec"]["group"], names["plural"], names["shortNames"]) == (
        "datamix.io",
        "datamixtureexperiments",
        ["dmx"],
    )
    assert crd["spec"]["scope"] == "Namespaced"
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:4] == ["Phase", "Shape", "Progress", "Loss"] and columns[-1] == "Age"


def test_schema_rules_use_the_run_defaults() -> None:
    """The spec rule keeping output.path and baseDir apart writes the defaults out; they must be
    the ones the run spec uses."""
    from datamix.experiment import DEFAULT_BASE_DIR, DEFAULT_OUTPUT_PATH
    from datamix.schema import _BASE_DIR, _OUTPUT_PATH

    assert f"'{DEFAULT_BASE_DIR}'" in _BASE_DIR
    assert f"'{DEFAULT_OUTPUT_PATH}'" in _OUTPUT_PATH
