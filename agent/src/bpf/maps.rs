//! Reading the maps the kernel programs count in: sums over CPUs, and clearing a policy slot.

use agent_common::maps::Dropped;
use anyhow::Context as _;
use aya::{
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap},
    Pod,
};

/// A per-CPU counter map, each key's counts summed over CPUs; `what` names it in errors.
pub fn summed<K: Pod>(
    map: &PerCpuHashMap<MapData, K, u64>,
    what: &str,
) -> anyhow::Result<Vec<(K, u64)>> {
    let mut out = Vec::new();
    for entry in map.iter() {
        let (key, values) = entry.with_context(|| format!("reading the {what}"))?;
        out.push((key, values.iter().sum()));
    }
    Ok(out)
}

/// One slot of a per-CPU array, summed over CPUs.
pub fn total_at(map: &PerCpuArray<MapData, u64>, index: u32) -> anyhow::Result<u64> {
    Ok(map.get(&index, 0)?.iter().sum())
}

/// A ring's dropped records, summed over CPUs: (lost: the ring was full, thinned: over
/// the budget).
pub fn dropped(map: &PerCpuArray<MapData, u64>) -> anyhow::Result<(u64, u64)> {
    Ok((
        total_at(map, Dropped::Lost.index())?,
        total_at(map, Dropped::Thinned.index())?,
    ))
}

/// Removes a map's entries of one policy slot; `what` names the slot in errors.
pub fn clear_slot<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    slot: u32,
    slot_of: impl Fn(&K) -> u32,
    what: &str,
) -> anyhow::Result<()> {
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| slot_of(k) == slot)
        .collect();
    for k in stale {
        map.remove(&k)
            .with_context(|| format!("clearing the inactive {what} slot"))?;
    }
    Ok(())
}
