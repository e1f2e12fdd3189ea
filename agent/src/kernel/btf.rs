//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find the
//! byte offset of a struct field, following anonymous structs and unions as C does.
//!
//! Rust eBPF has no CO-RE relocations, so the agent reads the offsets the programs need here,
//! once at start-up, and hands them over as a global.
//!
//! aya parses the same BTF for its loader and LSM attachments (`bpf::object`), but keeps
//! its types and members private (only a look-up of a type id by name is public): the
//! offsets cannot be read from aya's parse, so this reader stays, used at start only.

use std::{collections::HashMap, path::Path};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not BTF data (bad magic {0:#06x})")]
    BadMagic(u16),
    #[error("BTF data is truncated or malformed at byte {0}")]
    Malformed(usize),
    #[error("BTF has unknown type kind {kind} (type id {id})")]
    UnknownKind { kind: u32, id: u32 },
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("the kernel's BTF has no field {field} in struct {owner}")]
    NoField { owner: String, field: String },
    #[error("field {0} is a bit field; it has no byte offset")]
    BitField(String),
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_TYPE_TAG: u32 = 18;

struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset in bits, and whether it is a bit field.
    bit_offset: u32,
    bitfield: bool,
}

struct Type {
    name_off: u32,
    kind: u32,
    /// For modifiers and typedefs: the type they refer to; for a function, its prototype.
    refers_to: u32,
    /// For a function prototype: how many parameters it has.
    vlen: u32,
    members: Vec<Member>,
}

pub struct Btf {
    strings: Vec<u8>,
    /// Index `id - 1`: type ids start at 1 (0 is void).
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed(at))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = data
            .get(0..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or(BtfError::Malformed(0))?;
        if magic != 0xeb9f {
            return Err(BtfError::BadMagic(magic));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = hdr_len + u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = hdr_len + u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let strings = data
            .get(str_off..str_off + str_len)
            .ok_or(BtfError::Malformed(str_off))?
            .to_vec();
        let type_data = data
            .get(type_off..type_off + type_len)
            .ok_or(BtfError::Malformed(type_off))?;

        let mut types = Vec::new();
        let mut at = 0;
        while at < type_data.len() {
            let name_off = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4,          // int, var, decl_tag
                2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, modifiers, func, float, type_tag
                3 => 12,                   // array
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let raw = u32_at(type_data, m + 8)?;
                        members.push(Member {
                            name_off: u32_at(type_data, m)?,
                            type_id: u32_at(type_data, m + 4)?,
                            bit_offset: if kind_flag { raw & 0xff_ffff } else { raw },
                            bitfield: kind_flag && raw >> 24 != 0,
                        });
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,   // enum, func_proto
                15 | 19 => vlen * 12, // datasec, enum64
                other => {
                    return Err(BtfError::UnknownKind {
                        kind: other,
                        id: types.len() as u32 + 1,
                    })
                }
            };
            at += extra;
            types.push(Type {
                name_off,
                kind,
                refers_to: size_or_type,
                vlen: vlen as u32,
                members,
            });
        }

        let mut btf = Btf {
            strings,
            types,
            structs_by_name: HashMap::new(),
        };
        for (i, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && !t.members.is_empty() {
                let name = btf.name(t.name_off).to_string();
                btf.structs_by_name.entry(name).or_insert(i as u32 + 1);
            }
        }
        Ok(btf)
    }

    /// Whether the kernel has a function of this name (an LSM hook has `bpf_lsm_<hook>`).
    pub fn has_function(&self, name: &str) -> bool {
        self.types
            .iter()
            .any(|t| t.kind == KIND_FUNC && self.name(t.name_off) == name)
    }

    /// How many parameters the kernel function `name` takes (an LSM hook's grew over
    /// releases: `bpf` took a fourth, `kernel`, in 6.9).
    pub fn function_params(&self, name: &str) -> Option<u32> {
        let func = self
            .types
            .iter()
            .find(|t| t.kind == KIND_FUNC && self.name(t.name_off) == name)?;
        self.ty(func.refers_to).map(|proto| proto.vlen)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        id.checked_sub(1).and_then(|i| self.types.get(i as usize))
    }

    /// Follows typedefs and qualifiers to the type underneath.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.ty(id) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.refers_to
                }
                _ => break,
            }
        }
        id
    }

    /// Bit offset of `field` within the struct/union `id`, looking inside anonymous members.
    fn find_member(&self, id: u32, field: &str) -> Option<(u32, u32, bool)> {
        let t = self.ty(id)?;
        for m in &t.members {
            if self.name(m.name_off) == field {
                return Some((m.bit_offset, m.type_id, m.bitfield));
            }
        }
        for m in t.members.iter().filter(|m| m.name_off == 0) {
            let inner = self.resolve(m.type_id);
            if matches!(
                self.ty(inner).map(|t| t.kind),
                Some(KIND_STRUCT | KIND_UNION)
            ) {
                if let Some((off, ty, bf)) = self.find_member(inner, field) {
                    return Some((m.bit_offset + off, ty, bf));
                }
            }
        }
        None
    }

    /// Byte offset of a field path such as `task_struct.thread_info.status`.
    pub fn field_offset(&self, path: &str) -> Result<u32, BtfError> {
        let mut parts = path.split('.');
        let owner = parts.next().unwrap_or_default();
        let mut id = *self
            .structs_by_name
            .get(owner)
            .ok_or_else(|| BtfError::NoStruct(owner.to_string()))?;
        let mut bits = 0;
        let mut owner_name = owner.to_string();
        for field in parts {
            let (off, ty, bitfield) =
                self.find_member(id, field)
                    .ok_or_else(|| BtfError::NoField {
                        owner: owner_name.clone(),
                        field: field.to_string(),
                    })?;
            if bitfield || off % 8 != 0 {
                return Err(BtfError::BitField(path.to_string()));
            }
            bits += off;
            id = self.resolve(ty);
            owner_name = field.to_string();
        }
        Ok(bits / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: `struct inner { int a; int b; }` and
    /// `struct outer { long x; struct { int y; struct inner in; }; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0outer\0x\0y\0in\0long\0".to_vec();
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| p as u32 + 1)
                .unwrap_or_else(|| panic!("{name} not in the sample strings"))
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        // 1: int
        push(&[s("int"), 1 << 24, 4, 32]);
        // 2: struct inner { int a @0; int b @32 }
        push(&[
            s("inner"),
            KIND_STRUCT << 24 | 2,
            8,
            s("a"),
            1,
            0,
            s("b"),
            1,
            32,
        ]);
        // 3: long
        push(&[s("long"), 1 << 24, 8, 64]);
        // 4: anonymous struct { int y @0; struct inner in @64 }
        push(&[0, KIND_STRUCT << 24 | 2, 16, s("y"), 1, 0, s("in"), 2, 64]);
        // 5: struct outer { long x @0; <anon> @64 }
        push(&[
            s("outer"),
            KIND_STRUCT << 24 | 2,
            24,
            s("x"),
            3,
            0,
            0,
            4,
            64,
        ]);
        let mut data = Vec::new();
        for w in [
            0xeb9f_u16 as u32 | 1 << 16,
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend(w.to_le_bytes());
        }
        data.extend(types);
        data.extend(strings);
        data
    }

    #[test]
    fn finds_fields_through_anonymous_members() {
        let btf = Btf::parse(&sample()).expect("sample parses");
        assert_eq!(btf.field_offset("outer.x").ok(), Some(0));
        assert_eq!(btf.field_offset("outer.y").ok(), Some(8));
        assert_eq!(btf.field_offset("outer.in.b").ok(), Some(20));
        assert!(matches!(
            btf.field_offset("outer.nope"),
            Err(BtfError::NoField { .. })
        ));
        assert!(matches!(
            btf.field_offset("nope.x"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Btf::parse(b"\x00\x01rest"),
            Err(BtfError::BadMagic(_))
        ));
        assert!(matches!(
            Btf::parse(&sample()[..30]),
            Err(BtfError::Malformed(_))
        ));
    }

    #[test]
    fn reads_the_running_kernel() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("skipped: this kernel exposes no BTF at {}", path.display());
            return;
        }
        let btf = Btf::from_file(path).expect("the running kernel's BTF parses");
        let mm = btf.field_offset("task_struct.mm").expect("task_struct.mm");
        assert!(mm > 0);
        assert!(btf.field_offset("mm_struct.exe_file").is_ok());
        assert!(btf.field_offset("task_struct.thread_info.status").is_ok());
    }
}
