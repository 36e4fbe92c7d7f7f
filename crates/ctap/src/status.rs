//! CTAP status codes: the first byte of every CTAPHID_CBOR response, and (for the low range) the
//! byte of a CTAPHID_ERROR report.
//!
//! The numbers are CTAP 2.1 §8.2; the CTAP-HID error codes (0x01..0x0B) share the same values,
//! so one enum serves both layers.

/// A CTAP2 status code. `Ok` is the success byte; every other variant is an error that the
/// engine returns as the single status byte of a response.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum StatusCode {
    #[error("success")]
    Ok = 0x00,
    #[error("invalid command")]
    InvalidCommand = 0x01,
    #[error("invalid parameter")]
    InvalidParameter = 0x02,
    #[error("invalid message or item length")]
    InvalidLength = 0x03,
    #[error("invalid message sequencing")]
    InvalidSeq = 0x04,
    #[error("message timed out")]
    Timeout = 0x05,
    #[error("channel busy")]
    ChannelBusy = 0x06,
    #[error("command requires channel lock")]
    LockRequired = 0x0A,
    #[error("command not allowed on this channel")]
    InvalidChannel = 0x0B,
    #[error("invalid or unexpected CBOR type")]
    CborUnexpectedType = 0x11,
    #[error("invalid CBOR")]
    InvalidCbor = 0x12,
    #[error("missing non-optional parameter")]
    MissingParameter = 0x14,
    #[error("limit for number of items exceeded")]
    LimitExceeded = 0x15,
    #[error("fingerprint database full")]
    FpDatabaseFull = 0x17,
    #[error("large blob storage full")]
    LargeBlobStorageFull = 0x18,
    #[error("valid credential found in the exclude list")]
    CredentialExcluded = 0x19,
    #[error("processing")]
    Processing = 0x21,
    #[error("credential not valid for the authenticator")]
    InvalidCredential = 0x22,
    #[error("user action pending")]
    UserActionPending = 0x23,
    #[error("operation pending")]
    OperationPending = 0x24,
    #[error("no outstanding operations")]
    NoOperations = 0x25,
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm = 0x26,
    #[error("operation denied")]
    OperationDenied = 0x27,
    #[error("internal key storage full")]
    KeyStoreFull = 0x28,
    #[error("unsupported option")]
    UnsupportedOption = 0x2B,
    #[error("invalid option")]
    InvalidOption = 0x2C,
    #[error("pending keep-alive was cancelled")]
    KeepaliveCancel = 0x2D,
    #[error("no valid credentials provided")]
    NoCredentials = 0x2E,
    #[error("timed out waiting for user interaction")]
    UserActionTimeout = 0x2F,
    #[error("continuation command not allowed")]
    NotAllowed = 0x30,
    #[error("PIN invalid")]
    PinInvalid = 0x31,
    #[error("PIN blocked")]
    PinBlocked = 0x32,
    #[error("PIN/UV auth parameter invalid")]
    PinAuthInvalid = 0x33,
    #[error("PIN/UV auth blocked until power cycle")]
    PinAuthBlocked = 0x34,
    #[error("no PIN has been set")]
    PinNotSet = 0x35,
    #[error("a pinUvAuthToken is required")]
    PuatRequired = 0x36,
    #[error("PIN policy violation")]
    PinPolicyViolation = 0x37,
    #[error("pinUvAuthToken expired")]
    PinTokenExpired = 0x38,
    #[error("request too large")]
    RequestTooLarge = 0x39,
    #[error("action timed out")]
    ActionTimeout = 0x3A,
    #[error("user presence required")]
    UpRequired = 0x3B,
    #[error("built-in user verification blocked")]
    UvBlocked = 0x3C,
    #[error("integrity failure")]
    IntegrityFailure = 0x3D,
    #[error("invalid subcommand")]
    InvalidSubcommand = 0x3E,
    #[error("user verification failed")]
    UvInvalid = 0x3F,
    #[error("unauthorized permission")]
    UnauthorizedPermission = 0x40,
    #[error("other unspecified error")]
    Other = 0x7F,
}

impl StatusCode {
    /// Every defined status code, in numeric order (used by `from_u8` and by tests).
    pub const ALL: [StatusCode; 47] = [
        Self::Ok,
        Self::InvalidCommand,
        Self::InvalidParameter,
        Self::InvalidLength,
        Self::InvalidSeq,
        Self::Timeout,
        Self::ChannelBusy,
        Self::LockRequired,
        Self::InvalidChannel,
        Self::CborUnexpectedType,
        Self::InvalidCbor,
        Self::MissingParameter,
        Self::LimitExceeded,
        Self::FpDatabaseFull,
        Self::LargeBlobStorageFull,
        Self::CredentialExcluded,
        Self::Processing,
        Self::InvalidCredential,
        Self::UserActionPending,
        Self::OperationPending,
        Self::NoOperations,
        Self::UnsupportedAlgorithm,
        Self::OperationDenied,
        Self::KeyStoreFull,
        Self::UnsupportedOption,
        Self::InvalidOption,
        Self::KeepaliveCancel,
        Self::NoCredentials,
        Self::UserActionTimeout,
        Self::NotAllowed,
        Self::PinInvalid,
        Self::PinBlocked,
        Self::PinAuthInvalid,
        Self::PinAuthBlocked,
        Self::PinNotSet,
        Self::PuatRequired,
        Self::PinPolicyViolation,
        Self::PinTokenExpired,
        Self::RequestTooLarge,
        Self::ActionTimeout,
        Self::UpRequired,
        Self::UvBlocked,
        Self::IntegrityFailure,
        Self::InvalidSubcommand,
        Self::UvInvalid,
        Self::UnauthorizedPermission,
        Self::Other,
    ];

    /// The status code for a byte, or `None` for bytes CTAP 2.1 does not define (including the
    /// extension 0xE0..0xEF and vendor 0xF0..0xFF ranges, which this authenticator never emits).
    pub fn from_u8(byte: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|code| code.as_u8() == byte)
    }

    /// The wire byte.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

impl From<StatusCode> for u8 {
    fn from(code: StatusCode) -> u8 {
        code.as_u8()
    }
}

#[cfg(test)]
mod tests {
    use super::StatusCode;

    #[test]
    fn every_defined_byte_round_trips() {
        for code in StatusCode::ALL {
            assert_eq!(StatusCode::from_u8(code.as_u8()), Some(code));
        }
    }

    #[test]
    fn wire_values_match_the_specification() {
        assert_eq!(StatusCode::InvalidCbor.as_u8(), 0x12);
        assert_eq!(StatusCode::KeepaliveCancel.as_u8(), 0x2D);
        assert_eq!(StatusCode::OperationDenied.as_u8(), 0x27);
        assert_eq!(StatusCode::PinAuthBlocked.as_u8(), 0x34);
        assert_eq!(StatusCode::UnauthorizedPermission.as_u8(), 0x40);
        assert_eq!(StatusCode::Other.as_u8(), 0x7F);
    }

    #[test]
    fn undefined_bytes_are_rejected() {
        for byte in [
            0x07, 0x09, 0x0C, 0x10, 0x13, 0x16, 0x1A, 0x20, 0x29, 0x41, 0x7E, 0x80, 0xE0, 0xFF,
        ] {
            assert_eq!(StatusCode::from_u8(byte), None, "byte {byte:#04x}");
        }
    }
}
