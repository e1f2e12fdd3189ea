//! Stable rule ids: the kernel counts attempts per rule id, for as long as the agent runs, so
//! an id must name the same rule across reloads. Ids are given by rule name, first come,
//! never reused; a reload that reorders, adds or removes rules keeps every count where it was.

use std::collections::HashMap;

use agent_common::policy::DEFAULT_RULE;

/// Distinct rule names one run of the agent will number. Bounds the kernel's counter keys and
/// the metrics' `rule` label, however many policies are loaded.
pub const MAX_NAMES: usize = 4096;

#[derive(Debug, Default)]
pub struct RuleIds {
    by_name: HashMap<String, u32>,
    /// Index `id - 1`.
    names: Vec<String>,
}

impl RuleIds {
    /// The id of a rule name, new ids for new names. Refuses when the names run out.
    pub fn id_for(&mut self, name: &str) -> Result<u32, String> {
        if let Some(id) = self.by_name.get(name) {
            return Ok(*id);
        }
        if self.names.len() >= MAX_NAMES {
            return Err(format!(
                "{MAX_NAMES} distinct rule names since the agent started; restart it to number rules afresh"
            ));
        }
        self.names.push(name.to_string());
        let id = self.names.len() as u32;
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    /// Numbers rule names as an earlier agent did (`names()[id - 1]`), so that counters it
    /// left in the kernel keep their rules.
    pub fn from_names(names: Vec<String>) -> Self {
        let by_name = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32 + 1))
            .collect();
        RuleIds { by_name, names }
    }

    /// Every name numbered so far, by id - 1.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The name of a rule id; the policy's default for 0.
    pub fn name(&self, id: u32) -> &str {
        if id == DEFAULT_RULE {
            return "default";
        }
        self.names
            .get(id as usize - 1)
            .map_or("unknown", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_names_across_reloads() {
        let mut ids = RuleIds::default();
        let chronyd = ids.id_for("chronyd").expect("id");
        let ptp4l = ids.id_for("ptp4l").expect("id");
        // A later policy lists them the other way round and adds one.
        assert_eq!(ids.id_for("ptp4l"), Ok(ptp4l));
        assert_eq!(ids.id_for("chronyd"), Ok(chronyd));
        let phc2sys = ids.id_for("phc2sys").expect("id");
        assert_eq!(ids.name(chronyd), "chronyd");
        assert_eq!(ids.name(phc2sys), "phc2sys");
        assert_eq!(ids.name(0), "default");
        assert_eq!(ids.name(99), "unknown");
    }

    #[test]
    fn names_are_bounded() {
        let mut ids = RuleIds::default();
        for i in 0..MAX_NAMES {
            ids.id_for(&format!("r{i}")).expect("within the bound");
        }
        assert!(ids.id_for("one-more").is_err());
        assert!(ids.id_for("r7").is_ok());
    }
}
