//! A scenario's `[statistics]` (issue #18): the release the coordinator
//! runs before the first round, and what members count it over. The
//! release is written to `<run dir>/statistics.json`, each member's exact
//! counts to `<run dir>/statistics/<member>.json` (they never leave it in
//! the protocol: only the noised secure sum does).

use anyhow::Context;
use tessera_protocol::Coordinator;
use tessera_protocol::member::StatisticsShape;

use crate::scenario::Scenario;

/// The scenario's declared schema and classes, when it asks for statistics.
pub(crate) fn shape(s: &Scenario) -> Option<StatisticsShape> {
    s.statistics.as_ref()?;
    let schema = crate::data::table_spec(s).declared_schema().ok().flatten()?;
    let classes = s.model.as_ref()?.num_classes as u32;
    Some(StatisticsShape { schema, classes })
}

/// Attach the `[statistics]` release to the run's coordinator.
pub(crate) fn attach(s: &Scenario, coordinator: Coordinator) -> anyhow::Result<Coordinator> {
    let Some(st) = &s.statistics else { return Ok(coordinator) };
    let (Some(p), Some(shape)) = (&s.privacy, shape(s)) else {
        anyhow::bail!("[statistics] needs [privacy], a declared [data] schema and a tabular [model]");
    };
    let release = st.release(&shape.schema, shape.classes, p.unit, p.delta).context("[statistics]")?;
    Ok(coordinator.with_statistics(release, true)?)
}
