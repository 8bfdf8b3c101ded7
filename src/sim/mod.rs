//! mos-sim: placeholder, filled in by the simulator work.
