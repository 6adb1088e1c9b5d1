"""The dtype table against the installed sdnq's, and the C view of it against the Python one."""
import pytest
import torch

from comfy_sdnq import dtypes, kernels


def sdnq_table():
    from sdnq.common import dtype_dict

    return dtype_dict


def test_table_matches_sdnq():
    table = sdnq_table()
    base = {}
    for name, d in table.items():
        base.setdefault(id(d), name)
    sdnq_names = set(base.values())
    ours = {t.name for t in dtypes.TYPES}
    print(f"\ndtype table: {len(ours)} base types, {len(dtypes.ALIASES)} aliases, "
          f"{len(ours) + len(dtypes.ALIASES)} names (sdnq: {len(table)} names)")
    assert ours == sdnq_names
    for t in dtypes.TYPES:
        d = table[t.name]
        assert (t.bits, t.exponent, t.mantissa) == (d["num_bits"], d["exponent"], d["mantissa"]), t.name
        assert (t.min, t.max) == (d["min"], d["max"]), t.name
        assert (t.is_unsigned, t.is_integer, t.is_packed) == (d["is_unsigned"], d["is_integer"], d["is_packed"]), t.name
        assert t.family == ("FLOAT" if not t.is_integer and not t.is_packed else t.family)
        if not t.is_packed:
            assert t.storage_dtype == d["storage_dtype"], t.name


def test_aliases_match_sdnq():
    table = sdnq_table()
    base = {}
    for name, d in table.items():
        base.setdefault(id(d), name)
    for name, d in table.items():
        if base[id(d)] != name:
            assert dtypes.get(name).name == base[id(d)], name
    assert set(dtypes.names()) == set(table)


def test_packed_storage_matches_sdnq_packers():
    from sdnq.packed_float import pack_float
    from sdnq.packed_int import pack_int

    table = sdnq_table()
    for t in dtypes.TYPES:
        if not t.is_packed:
            continue
        n = t.block_elems * 4
        if t.is_integer:
            q = torch.zeros(n, dtype=table[t.name]["torch_dtype"])
            packed = pack_int(q, t.name)
        else:
            packed = pack_float(torch.zeros(n), t.name)
        assert packed.dtype == t.storage_dtype, t.name
        assert tuple(packed.shape) == t.packed_shape(n) or t.bits in (8, 16), t.name
        assert packed.numel() == t.storage_numel(n), t.name


@pytest.mark.skipif(kernels.backend() != "c", reason="C extension not built")
def test_c_table_equals_python_table():
    from comfy_sdnq import _C

    rows = [tuple(r) for r in _C.type_table()]
    fam = ["INT", "UINT", "FLOAT", "FLOATX", "UFLOATX"]
    py = [(t.id, t.name, fam.index(t.family), t.bits, t.exponent, t.mantissa, t.min, t.max, t.storage,
           int(t.is_unsigned), int(t.is_integer), int(t.is_packed), t.block_elems, t.block_words) for t in dtypes.TYPES]
    assert rows == py
    assert {a: i for a, i in _C.aliases()} == {a: t.id for a, t in dtypes.ALIASES.items()}


def test_ids_unique_and_stable():
    ids = [t.id for t in dtypes.TYPES]
    assert len(ids) == len(set(ids)) == 176
    # ids are part of the on-disk/ABI contract: spot-check a few
    assert dtypes.get("uint4").id == 30 and dtypes.get("int8").id == 3 and dtypes.get("float8_e4m3fn").id == 37


def test_unknown_names_raise():
    from comfy_sdnq.errors import SdnqFormatError

    for bad in ("int0", "uint17", "float4", "", "INT8", 3.5, None):
        with pytest.raises(SdnqFormatError):
            dtypes.get(bad)
