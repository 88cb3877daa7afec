#!/usr/bin/env python3
"""Generate proptest strategies for the object-API (`...T`) types of the Selfie schemas.

Reads every `.fbs` file in the schema folder and writes Rust source to stdout. It
understands the subset of the FlatBuffers IDL that Selfie's schemas use (namespaces,
enums, unions with optional aliases, structs, tables, `= null` optional scalars,
`(deprecated)`), and fails loudly on anything else, so that a schema change it cannot
follow is caught at generation time.
"""
import pathlib
import re
import sys

SCALARS = {
    "bool": ("bool", "any::<bool>()"),
    "byte": ("i8", "any::<i8>()"),
    "ubyte": ("u8", "any::<u8>()"),
    "short": ("i16", "any::<i16>()"),
    "ushort": ("u16", "any::<u16>()"),
    "int": ("i32", "any::<i32>()"),
    "uint": ("u32", "any::<u32>()"),
    "long": ("i64", "any::<i64>()"),
    "ulong": ("u64", "any::<u64>()"),
    "float": ("f32", "(-1.0e6f32..1.0e6f32)"),
    "double": ("f64", "(-1.0e12f64..1.0e12f64)"),
}

DECL = re.compile(
    r"(namespace)\s+([\w.]+)\s*;"
    r"|(include|root_type|file_identifier|attribute)\s+[^;]*;"
    r"|(enum|union|struct|table)\s+(\w+)\s*(?::\s*(\w+))?\s*(?:\(([^)]*)\))?\s*\{([^}]*)\}",
    re.S,
)


def strip_comments(text):
    return re.sub(r"//[^\n]*", "", text)


def parse(schema_dir):
    decls = {}
    for path in sorted(pathlib.Path(schema_dir).glob("*.fbs")):
        text = strip_comments(path.read_text())
        ns = ""
        pos = 0
        for m in DECL.finditer(text):
            gap = text[pos:m.start()].strip()
            if gap:
                sys.exit(f"{path}: cannot parse near: {gap[:60]!r}")
            pos = m.end()
            if m.group(1):
                ns = m.group(2)
            elif m.group(3):
                continue
            else:
                kind, name, _base, decl_attrs, body = (
                    m.group(4), m.group(5), m.group(6), m.group(7), m.group(8))
                fq = f"{ns}.{name}"
                if kind == "enum":
                    decls[fq] = {"kind": "enum"}
                elif kind == "union":
                    members = []
                    for item in filter(None, (s.strip() for s in body.split(","))):
                        if ":" in item:
                            alias, ty = (s.strip() for s in item.split(":"))
                        else:
                            alias, ty = item, item
                        members.append((alias, ty))
                    decls[fq] = {"kind": "union", "ns": ns, "members": members}
                else:
                    fields = []
                    for item in filter(None, (s.strip() for s in body.split(";"))):
                        fm = re.fullmatch(
                            r"(\w+)\s*:\s*(\[?[\w.]+\]?)\s*(?:=\s*([\w.\-]+))?\s*(\(([^)]*)\))?",
                            item,
                        )
                        if not fm:
                            sys.exit(f"{path}: cannot parse field {item!r} in {name}")
                        fname, ftype, default, _, attrs = fm.groups()
                        if attrs and "deprecated" in attrs:
                            continue
                        fields.append((fname, ftype, default == "null"))
                    decls[fq] = {"kind": kind, "ns": ns, "fields": fields,
                                 "attrs": [a.strip() for a in (decl_attrs or "").split(",") if a.strip()]}
        tail = text[pos:].strip()
        if tail:
            sys.exit(f"{path}: cannot parse near: {tail[:60]!r}")
    return decls


def resolve(decls, ns, name):
    if name in decls:
        return name
    fq = f"{ns}.{name}"
    if fq in decls:
        return fq
    sys.exit(f"unknown type {name} in namespace {ns}")


def rust_path(fq, suffix=""):
    parts = fq.split(".")
    return "crate::generated::" + "::".join(parts[:-1] + [parts[-1] + suffix])


def fn_name(fq):
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", fq.split(".")[-1]).lower()
    return "_".join(fq.split(".")[:-1] + [snake])


def field_strategy(decls, ns, ftype, optional):
    if ftype.startswith("["):
        inner = ftype[1:-1]
        if inner in SCALARS:
            return f"option::of(vec({SCALARS[inner][1]}, 0..6))"
        if inner == "string":
            return "option::of(vec(text(), 0..4))"
        fq = resolve(decls, ns, inner)
        kind = decls[fq]["kind"]
        if kind == "enum":
            return f"option::of(vec(select({rust_path(fq)}::ENUM_VALUES), 0..4))"
        if kind == "struct":
            return f"option::of(vec({fn_name(fq)}(), 0..4))"
        return (f"if depth == 0 {{ Just(None).boxed() }} else "
                f"{{ option::of(vec({fn_name(fq)}(depth - 1), 0..3)).boxed() }}")
    if ftype in SCALARS:
        s = SCALARS[ftype][1]
        return f"option::of({s})" if optional else s
    if ftype == "string":
        return "option::of(text())"
    fq = resolve(decls, ns, ftype)
    kind = decls[fq]["kind"]
    if kind == "enum":
        s = f"select({rust_path(fq)}::ENUM_VALUES)"
        return f"option::of({s})" if optional else s
    if kind == "struct":
        return f"option::of({fn_name(fq)}())"
    if kind == "union":
        return f"{fn_name(fq)}(depth)"
    return (f"if depth == 0 {{ Just(None).boxed() }} else "
            f"{{ option::of({fn_name(fq)}(depth - 1).prop_map(Box::new)).boxed() }}")


def chunks(items, n):
    return [items[i:i + n] for i in range(0, len(items), n)]


def emit(decls):
    out = [
        "// @generated by protocol/scripts/gen_arbitrary.py from protocol/schema/*.fbs.",
        "// Do not edit: run protocol/generate.sh.",
        "//! proptest strategies for every object-API type of the protocol.",
        "//!",
        "//! `depth` bounds nesting: at 0, table fields are absent and unions are `NONE`.",
        "#![allow(clippy::all, unused_imports, unused_parens)]",
        "use proptest::collection::vec;",
        "use proptest::option;",
        "use proptest::prelude::*;",
        "use proptest::sample::select;",
        "",
        "fn text() -> BoxedStrategy<String> {",
        "    vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect()).boxed()",
        "}",
        "",
    ]
    for fq in sorted(decls):
        d = decls[fq]
        if d["kind"] == "enum":
            continue
        ty = rust_path(fq, "T")
        name = fn_name(fq)
        if d["kind"] == "union":
            out.append(f"/// Any variant of `{fq}` (or `NONE`).")
            out.append(f"pub fn {name}(depth: u32) -> BoxedStrategy<{ty}> {{")
            out.append(f"    if depth == 0 {{ return Just({ty}::NONE).boxed(); }}")
            out.append(f"    proptest::strategy::Union::new(vec![")
            out.append(f"        Just({ty}::NONE).boxed(),")
            for alias, mty in d["members"]:
                mfq = resolve(decls, d["ns"], mty)
                out.append(f"        {fn_name(mfq)}(depth - 1).prop_map(|v| {ty}::{alias}(Box::new(v))).boxed(),")
            out.append("    ]).boxed()")
            out.append("}")
            out.append("")
            out.append(f"/// One strategy per variant of `{fq}`, named, so tests can cover each.")
            out.append(f"pub fn {name}_variants(depth: u32) -> Vec<(&'static str, BoxedStrategy<{ty}>)> {{")
            out.append("    vec![")
            for alias, mty in d["members"]:
                mfq = resolve(decls, d["ns"], mty)
                out.append(f"        (\"{mfq}\", {fn_name(mfq)}(depth.saturating_sub(1)).prop_map(|v| {ty}::{alias}(Box::new(v))).boxed()),")
            out.append("    ]")
            out.append("}")
            out.append("")
            continue
        fields = d["fields"]
        is_struct = d["kind"] == "struct"
        sig = f"pub fn {name}() -> BoxedStrategy<{ty}>" if is_struct else \
            f"pub fn {name}(depth: u32) -> BoxedStrategy<{ty}>"
        out.append(f"/// Arbitrary `{fq}`.")
        out.append(sig + " {")
        if not is_struct:
            out.append("    let _ = depth;")
        if not fields:
            out.append(f"    Just({ty}::default()).boxed()")
            out.append("}")
            out.append("")
            continue
        groups = chunks(fields, 8)
        strat = ", ".join(
            "(" + ", ".join(field_strategy(decls, d["ns"], t, o) for _, t, o in g) + ",)"
            for g in groups)
        pat = ", ".join("(" + ", ".join(f for f, _, _ in g) + ",)" for g in groups)
        inits = ", ".join(fields_name for fields_name, _, _ in fields)
        out.append(f"    ({strat},)")
        out.append(f"        .prop_map(|({pat},)| {ty} {{ {inits} }})")
        out.append("        .boxed()")
        out.append("}")
        out.append("")
    out.extend(emit_every_operation(decls))
    return "\n".join(out)


def emit_every_operation(decls):
    """One envelope strategy per (service, operation): `Envelope.body` selects a service
    table whose single field `op` is the union of that service's operations."""
    env = decls["selfie.Envelope"]
    body_union = decls[resolve(decls, env["ns"], dict((f, t) for f, t, _ in env["fields"])["body"])]
    env_t = rust_path("selfie.Envelope", "T")
    body_t = rust_path("selfie.Body", "T")
    out = [
        "/// One strategy per operation of every service, named by the operation's schema",
        "/// type, each wrapped in an arbitrary envelope.",
        f"pub fn every_operation(depth: u32) -> Vec<(&'static str, BoxedStrategy<{env_t}>)> {{",
        "    let mut all = Vec::new();",
    ]
    for alias, sty in body_union["members"]:
        sfq = resolve(decls, body_union["ns"], sty)
        service = decls[sfq]
        (fname, utype, _), = service["fields"]
        ufq = resolve(decls, service["ns"], utype)
        union = decls[ufq]
        st_t = rust_path(sfq, "T")
        u_t = rust_path(ufq, "T")
        for malias, mty in union["members"]:
            mfq = resolve(decls, union["ns"], mty)
            out.append(
                f"    all.push((\"{mfq}\", (selfie_envelope(0), {fn_name(mfq)}(depth)).prop_map(|(mut e, v)| {{ "
                f"e.body = {body_t}::{alias}(Box::new({st_t} {{ {fname}: {u_t}::{malias}(Box::new(v)) }})); e }}).boxed()));")
    out.append("    all")
    out.append("}")
    out.append("")
    return out


if __name__ == "__main__":
    print(emit(parse(sys.argv[1])))
