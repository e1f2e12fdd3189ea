//! A small program that changes (or reads) the clock the way time daemons do, and prints
//! the outcome as JSON: the VM tests run it from an allowed and from a denied path.
//!
//!   tg-clock step SECONDS   clock_settime(CLOCK_REALTIME, now + SECONDS)
//!   tg-clock freq PPM       adjtimex(ADJ_FREQUENCY)
//!   tg-clock read           adjtimex(modes = 0), read-only
//!   tg-clock hammer MS      clock_settime(CLOCK_REALTIME, now) for MS milliseconds: steps of
//!                           zero, counted
//!
//! Exit status 0 when the call succeeded, 1 when it failed (errno in the output), 2 on usage.

use timeguard_tests::clock;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["step", secs] => secs
            .parse::<i64>()
            .map(clock::step_by)
            .map_err(|e| e.to_string()),
        ["freq", ppm] => ppm
            .parse::<i64>()
            .map(clock::set_frequency_ppm)
            .map_err(|e| e.to_string()),
        ["read"] => Ok(clock::read()),
        ["hammer", ms] => match ms.parse::<u64>() {
            Ok(ms) => {
                println!("{}", clock::hammer(std::time::Duration::from_millis(ms)));
                std::process::exit(0);
            }
            Err(e) => Err(e.to_string()),
        },
        _ => Err("usage: tg-clock step SECONDS | freq PPM | read | hammer MS".to_string()),
    };
    match result {
        Ok(outcome) => {
            println!("{}", outcome.to_json());
            std::process::exit(if outcome.errno == 0 { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("tg-clock: {e}");
            std::process::exit(2);
        }
    }
}
