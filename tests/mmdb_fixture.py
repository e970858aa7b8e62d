"""Fixture GeoIP databases, built at test time with mmdb-writer in the
GeoLite2-City record layout, for loopback and the documentation ranges
(RFC 5737 for IPv4, RFC 3849 for IPv6)."""

import os

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def city(iso, country, region, name, postal, lat, lon, tz):
    return {
        "continent": {"code": "EU", "names": {"en": "Europe"}},
        "country": {"iso_code": iso, "names": {"en": country}},
        "subdivisions": [{"iso_code": region[:3].upper(), "names": {"en": region}}],
        "city": {"names": {"en": name}},
        "postal": {"code": postal},
        "location": {"latitude": lat, "longitude": lon, "time_zone": tz},
    }


PARIS = city("FR", "France", "Île-de-France", "Paris", "75001", 48.8566, 2.3522, "Europe/Paris")
SAN_FRANCISCO = city("US", "United States", "California", "San Francisco", "94103",
                     37.7749, -122.4194, "America/Los_Angeles")
BERLIN = city("DE", "Germany", "Land Berlin", "Berlin", "10115", 52.52, 13.405, "Europe/Berlin")
BRUSSELS = city("BE", "Belgium", "Brussels Capital", "Brussels", "1000", 50.8503, 4.3517,
                "Europe/Brussels")
TOKYO = city("JP", "Japan", "Tokyo", "Tokyo", "100-0001", 35.6762, 139.6503, "Asia/Tokyo")
LOOPBACK = {"country": {"iso_code": "ZZ", "names": {"en": "Loopback"}}}

# network -> record; 203.0.113.0/25 (half of TEST-NET-3) is left out: addresses
# without a record, among them what privacy.ip: truncate makes of 203.0.113.200
FIRST = {
    "127.0.0.0/8": LOOPBACK,
    "192.0.2.0/24": PARIS,            # TEST-NET-1
    "198.51.100.0/24": SAN_FRANCISCO,  # TEST-NET-2
    "203.0.113.128/25": TOKYO,         # TEST-NET-3, upper half
    "2001:db8::/32": BERLIN,
}
# the replacement: TEST-NET-1 moved to Brussels
SECOND = dict(FIRST, **{"192.0.2.0/24": BRUSSELS})


def write_mmdb(path, networks=FIRST, database_type="GeoLite2-City"):
    """Write ``networks`` (CIDR -> record) to ``path`` atomically (temporary file + rename,
    as geoipupdate does); returns ``path``."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=database_type,
                        languages=["en"], description="stilgar test fixture")
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    tmp = path + ".tmp"
    writer.to_db_file(tmp)
    os.replace(tmp, path)
    return path
