//! Types shared by the kernel programs (`agent-ebpf`) and the agent, defined once.
//!
//! Everything here is `no_std`, `#[repr(C)]` and free of pointers, so the same bytes mean the
//! same thing on both sides of a map or ring buffer. Decision logic that both sides need lives
//! here as plain functions, which is also what lets the host unit-test it.
#![no_std]

pub mod alert;
pub mod clock;
pub mod event;
pub mod integrity;
pub mod kernel;
pub mod maps;
pub mod net;
pub mod policy;
pub mod ptp;
pub mod tamper;

/// Implements `aya::Pod` for the userspace side (the kernel side needs no marker).
macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: plain `#[repr(C)]` data with explicit padding fields and no pointers.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use pod;

/// Defines a code the kernel writes into a record or a counter key (`#[repr]` of the field),
/// with its one name table: `name` (the stable label), `from_code`/`TryFrom` (None for a
/// code this build does not know), `name_of` (a recorded code's name, `unknown` ones
/// included) and `ALL`.
macro_rules! codes {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ident, unknown = $unknown:literal {
            $($(#[$vmeta:meta])* $variant:ident = $value:literal => $label:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[repr($repr)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)*
        }

        impl $name {
            /// Every code, in the order of the table.
            pub const ALL: [$name; [$($label),*].len()] = [$($name::$variant),*];

            /// The stable name of the code (a metric label value, a record field).
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }

            pub const fn from_code(code: $repr) -> Option<Self> {
                match code {
                    $($value => Some($name::$variant),)*
                    _ => None,
                }
            }

            /// The name of a code as the kernel recorded it.
            pub const fn name_of(code: $repr) -> &'static str {
                match Self::from_code(code) {
                    Some(c) => c.name(),
                    None => $unknown,
                }
            }

            pub const fn code(self) -> $repr {
                self as $repr
            }
        }

        impl TryFrom<$repr> for $name {
            type Error = $repr;

            fn try_from(code: $repr) -> Result<Self, $repr> {
                Self::from_code(code).ok_or(code)
            }
        }
    };
}
pub(crate) use codes;

#[cfg(test)]
mod codes_tests {
    use crate::{alert::Alert, net, policy::Verdict, tamper::Target};

    #[test]
    fn codes_round_trip_and_unknown_ones_are_named() {
        for v in Verdict::ALL {
            assert_eq!(Verdict::from_code(v.code()), Some(v));
            assert_eq!(Verdict::try_from(v as u8), Ok(v));
        }
        assert_eq!(Verdict::name_of(200), "unknown");
        assert_eq!(net::Reason::name_of(net::Reason::None.code()), "");
        assert_eq!(Alert::name_of(Alert::KissOfDeath.code()), "kiss_of_death");
        assert_eq!(Target::name_of(0), "");
        assert_eq!(net::NtpMode::name_of(0), "reserved");
        assert_eq!(net::List::COUNT, 5);
    }
}
