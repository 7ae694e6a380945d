"""Every matter option says whether it changes output bytes; fingerprints follow the classification."""

from __future__ import annotations

import dataclasses

import pytest

from models.base import MatterConfig, build_matter, is_classified, output_fields


def test_every_matter_config_field_is_classified():
    unclassified = [f.name for f in dataclasses.fields(MatterConfig) if not is_classified(f)]
    assert not unclassified, (f"MatterConfig fields {unclassified} must say whether they change output bytes: "
                              "declare them with output_option(...) or runtime_option(...)")


def test_output_fields_are_the_classified_ones():
    names = output_fields()
    assert {"seed", "long_side", "dtype", "decode_chunk", "posterior", "segment_len"} <= set(names)
    assert not {"batch_size", "compile", "device", "pin_memory"} & set(names)


@pytest.mark.parametrize("name", ["mask", "guided", "closed-form"])
def test_cpu_matter_fingerprint_ignores_options_it_does_not_read(name):
    a = build_matter(name, MatterConfig()).fingerprint()
    b = build_matter(name, MatterConfig(long_side=512, seed=3, dtype="fp16")).fingerprint()
    assert a == b and a["name"] == name and a["weights_sha256"] is None
    if name != "mask":
        assert a["constants"], "band matters fingerprint their fixed parameters"
