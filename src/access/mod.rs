//! Who may do what, apart from how requests arrive: [`scopes`] limits the registries and
//! repositories each service user may sync from and to, and [`damping`] slows down
//! password guessing per client address. Neither knows HTTP; the API layer applies them.

pub mod damping;
pub mod scopes;
