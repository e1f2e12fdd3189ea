//! The audit trail's records, one `Serialize` type per kind: the agent's own (`agent`), the
//! kernel's clock decisions (`clock`), and who made a request (`Who`, in every record). The
//! network and tamper records are built beside their guards (`network`, `tamper`).

pub mod agent;
pub mod clock;
pub mod who;

pub use agent::{AgentEvent, AgentRecord};
pub use clock::{clock_record, ClockRecord};
pub use who::Who;
