//! Record formats on their way between clients and the partition log.

pub mod legacy;
