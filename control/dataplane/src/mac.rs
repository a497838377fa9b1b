//! MAC addresses as the dataplane's API prints and parses them.
use std::{fmt, str::FromStr};

use crate::{Error, Result};

/// A 48-bit MAC address, printed and parsed as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts
                .next()
                .filter(|part| part.len() == 2)
                .ok_or_else(|| Error::InvalidMac(text.to_string()))?;
            *byte =
                u8::from_str_radix(part, 16).map_err(|_| Error::InvalidMac(text.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(Error::InvalidMac(text.to_string()));
        }
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_round_trip() {
        let mac: MacAddr = "02:0a:ff:00:01:9c".parse().expect("valid");
        assert_eq!(mac.0, [0x02, 0x0a, 0xff, 0x00, 0x01, 0x9c]);
        assert_eq!(mac.to_string(), "02:0a:ff:00:01:9c");
        assert!("02:0a:ff:00:01".parse::<MacAddr>().is_err());
        assert!("02:0a:ff:00:01:9c:00".parse::<MacAddr>().is_err());
        assert!("02:0a:ff:00:01:zz".parse::<MacAddr>().is_err());
    }
}
