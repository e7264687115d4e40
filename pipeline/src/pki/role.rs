//! Who a certificate speaks for.
//!
//! The role is carried in the subject's organizational unit (OU) so that any X.509 tool shows it,
//! and a verifier states which roles it accepts for a given message (a clearing message must be
//! signed by an institution signer, a PIN proof by a secure element, ...).

use std::fmt;
use std::str::FromStr;

/// The role a certificate is issued for; written as the subject OU (see [`Role::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The central bank's self-signed root certification authority.
    CentralBankRoot,
    /// An operating institution's CA, signed by the root, `pathLenConstraint` 0.
    InstitutionCa,
    /// An operating institution's signing key: clearing messages, responses, sync results,
    /// control commands.
    InstitutionSigner,
    /// The central bank's settlement-instruction signer, issued by the root.
    SettlementSigner,
    /// A wallet holder's terminal (phone, POS, hardware wallet, in-vehicle client).
    Terminal,
    /// A wallet's secure element; signs PIN-verification proofs.
    SecureElement,
    /// A wallet's own key, signing wallet key information sets.
    Wallet,
    /// A vehicle's in-vehicle client.
    Vehicle,
    /// A service entity (toll gantry, parking lot, charging or fuel station).
    ServiceEntity,
}

impl Role {
    /// Every role, in declaration order.
    pub const ALL: [Role; 9] = [
        Role::CentralBankRoot,
        Role::InstitutionCa,
        Role::InstitutionSigner,
        Role::SettlementSigner,
        Role::Terminal,
        Role::SecureElement,
        Role::Wallet,
        Role::Vehicle,
        Role::ServiceEntity,
    ];

    /// The role name written as the subject OU; stable, part of the certificate profile.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::CentralBankRoot => "central-bank-root",
            Role::InstitutionCa => "institution-ca",
            Role::InstitutionSigner => "institution-signer",
            Role::SettlementSigner => "settlement-signer",
            Role::Terminal => "terminal",
            Role::SecureElement => "secure-element",
            Role::Wallet => "wallet",
            Role::Vehicle => "vehicle",
            Role::ServiceEntity => "service-entity",
        }
    }

    /// Whether certificates of this role are certification authorities.
    pub const fn is_ca(self) -> bool {
        matches!(self, Role::CentralBankRoot | Role::InstitutionCa)
    }

    /// Whether the central bank's root issues this role directly (the others are issued by an
    /// institution CA).
    pub const fn is_issued_by_root(self) -> bool {
        matches!(self, Role::InstitutionCa | Role::SettlementSigner)
    }

    const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name given is not one of the [`Role`] names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role name {0:?}")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// A set of roles a verifier accepts; built from one role, an array or a slice of roles.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RoleSet(u16);

impl RoleSet {
    /// The empty set: accepts nothing.
    pub const EMPTY: RoleSet = RoleSet(0);

    /// The set of the given roles.
    pub const fn of(roles: &[Role]) -> RoleSet {
        let mut bits = 0;
        let mut i = 0;
        while i < roles.len() {
            bits |= roles[i].bit();
            i += 1;
        }
        RoleSet(bits)
    }

    /// Whether `role` is in the set.
    pub const fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// Whether the set accepts a CA certificate as the verified (leaf) certificate.
    pub const fn accepts_ca(self) -> bool {
        self.contains(Role::CentralBankRoot) || self.contains(Role::InstitutionCa)
    }

    /// The roles in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL
            .into_iter()
            .filter(move |role| self.contains(*role))
    }
}

impl fmt::Debug for RoleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for RoleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, role) in self.iter().enumerate() {
            if i > 0 {
                f.write_str("|")?;
            }
            f.write_str(role.as_str())?;
        }
        Ok(())
    }
}

impl From<Role> for RoleSet {
    fn from(role: Role) -> Self {
        RoleSet(role.bit())
    }
}

impl From<&[Role]> for RoleSet {
    fn from(roles: &[Role]) -> Self {
        RoleSet::of(roles)
    }
}

impl<const N: usize> From<[Role; N]> for RoleSet {
    fn from(roles: [Role; N]) -> Self {
        RoleSet::of(&roles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip_through_from_str() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert_eq!(
            "teller".parse::<Role>(),
            Err(UnknownRole("teller".to_owned()))
        );
    }

    #[test]
    fn role_set_contains_exactly_its_members() {
        let set = RoleSet::from([Role::Terminal, Role::Vehicle]);
        let members: Vec<Role> = set.iter().collect();
        assert_eq!(members, vec![Role::Terminal, Role::Vehicle]);
        assert!(!set.contains(Role::Wallet));
        assert!(!set.accepts_ca());
        assert!(RoleSet::from(Role::InstitutionCa).accepts_ca());
        assert_eq!(set.to_string(), "terminal|vehicle");
    }
}
