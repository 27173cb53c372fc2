//! Who may do what, apart from how requests arrive: [`scopes`] limits the registries and
//! repositories each service user may sync from and to, and [`damping`] slows down
//! password guessing per client address, [`default_passwords`] keeps guessable passwords
//! off open ports. None knows HTTP; the API layer and start-up apply them.

pub mod damping;
pub mod default_passwords;
pub mod scopes;
