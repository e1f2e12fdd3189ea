//! The embedded kernel programs, loaded once with this kernel's struct offsets, their maps
//! pinned; and the kernel's BTF, parsed once for the loader and every attachment after.

use agent_common::kernel::KernelOffsets;
use anyhow::{anyhow, Context as _};
use aya::{
    maps::{Map, MapData, MapError, RingBuf},
    Btf, Ebpf, EbpfLoader,
};

use super::{
    attach::{self, Attachment, Link, Target},
    pins::Pins,
    program::ProgramSpec,
};

/// The kernel programs, built by build.rs and embedded in the binary.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// The build of the embedded kernel programs (names its pin directory).
pub fn programs_build() -> String {
    super::pins::build_id(PROGRAMS)
}

/// The loaded programs, their pins, and the kernel's BTF they attach with.
pub struct Object {
    ebpf: Ebpf,
    pins: Pins,
    /// aya's parse of the kernel's BTF, or why there is none. Parsed here once, for the
    /// loader and every LSM program's load; released once they are attached at start
    /// (`release_btf`): the other kinds attach without it.
    btf: Result<Btf, String>,
}

impl Object {
    /// Loads the programs with this kernel's struct offsets, their maps pinned under `pins`
    /// (the maps an earlier agent of this build pinned are taken over as they are). Nothing
    /// is attached yet.
    pub fn load(offsets: &KernelOffsets, pins: Pins) -> anyhow::Result<Self> {
        let btf = Btf::from_sys_fs().map_err(|e| e.to_string());
        // The loader parses a BTF of its own on creation (aya offers no way around it);
        // handed ours, it drops that copy at once and relocates against the one kept here.
        let ebpf = EbpfLoader::new()
            .btf(btf.as_ref().ok())
            .override_global(agent_common::maps::KERNEL_OFFSETS, offsets, true)
            .default_map_pin_directory(pins.maps_dir())
            .load(PROGRAMS)
            .context("loading the embedded kernel programs")?;
        Ok(Object { ebpf, pins, btf })
    }

    /// Frees the kernel's BTF once the LSM programs are attached: kept, the idle agent holds
    /// about 24 MiB instead of 11 (measured observe-only, malloc_trim after start in both).
    pub fn release_btf(&mut self) {
        self.btf = Err("released after start-up, where the LSM programs attach".into());
    }

    /// The kernel's BTF, or why it could not be read.
    pub fn btf(&self) -> Result<&Btf, &str> {
        self.btf.as_ref().map_err(String::as_str)
    }

    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// Takes a map out of the object for the sensor that owns it, typed.
    pub fn take_map<M>(&mut self, name: &str) -> anyhow::Result<M>
    where
        M: TryFrom<Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the embedded object"))?;
        M::try_from(map).with_context(|| format!("opening the map {name}"))
    }

    /// A ring buffer of records from the kernel, by map name: CLOCK_EVENTS, NET_EVENTS,
    /// TAMPER_EVENTS (each can be taken once).
    pub fn take_ring(&mut self, name: &str) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("the ring buffer {name} was already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Attaches one program of the table to `target` (or takes over its pinned link).
    pub fn attach(&mut self, spec: &ProgramSpec, target: Target<'_>) -> anyhow::Result<Attachment> {
        attach::attach(
            &mut self.ebpf,
            &mut self.pins,
            self.btf.as_ref().map_err(String::as_str),
            spec,
            target,
        )
    }

    /// Detaches what `attach` made (unpinning it when pinned).
    pub fn release(&mut self, link: Link) {
        attach::release(&mut self.ebpf, &mut self.pins, link)
    }

    /// Detaches and unloads an enforcing program (LSM or BTF tracepoint) wherever it is attached.
    pub fn unload_enforcing(&mut self, spec: &ProgramSpec) -> anyhow::Result<()> {
        attach::unload_enforcing(&mut self.ebpf, &mut self.pins, spec)
    }
}

#[cfg(test)]
mod tests {
    /// The embedded object, parsed without a kernel.
    fn object() -> aya_obj::Object {
        aya_obj::Object::parse(super::PROGRAMS).expect("the embedded object parses")
    }

    /// A map renamed on one side only breaks here, on the host, not at load time in a VM:
    /// every name in `maps::ALL` is a map of the embedded programs, and every map there is
    /// listed (`.rodata`, `.bss` and the like are the programs' globals, not maps).
    #[test]
    fn maps_match_the_programs() {
        let object = object();
        let mut in_object: Vec<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            .filter(|name| !name.starts_with('.'))
            .collect();
        in_object.sort_unstable();
        let mut listed = agent_common::maps::ALL.to_vec();
        listed.sort_unstable();
        assert_eq!(in_object, listed);
    }

    /// Likewise for the programs: the table names each program of the object, once.
    #[test]
    fn the_table_names_every_program() {
        let object = object();
        let mut in_object: Vec<&str> = object.programs.keys().map(String::as_str).collect();
        in_object.sort_unstable();
        let mut listed = super::super::program::names();
        listed.sort_unstable();
        assert_eq!(in_object, listed);
    }
}
