"""What the four native mobile SDKs put on the wire (doc/sdks.md), for tests/test_mobile.py.

The batch bodies are byte for byte the examples of the wire study of the SDKs' source code
(Android classic 1.28.0 as its own ``RudderNetworkManager`` sent it, iOS classic 1.31.0 built from
``RSCloudModeManager.m``, Kotlin 1.6.0 as a copy of its ``HttpClientImpl`` sent it); the Swift
1.3.1 body is built the way ``DataStore.swift`` builds it (each event JSON-encoded with sorted keys,
pretty-printed). Every batch holds the same user: identify with traits, track ``Order Completed``,
screen ``Checkout``. :func:`personalise` gives each test its own messageIds and userId.
"""

import base64
import gzip
import json

ANONYMOUS_ID = "8d872292-709c-4f6c-9fd0-ae5a1d8ac8f5"
USER_ID = "u-1001"

ANDROID_BODY = (
    '{"sentAt":"2026-12-01T07:55:30.635Z","batch": [{"messageId":"3b0c7f5e-1d2a-4c4e-9a57-0f6c2a1b9e0'
    '1","channel":"mobile","context":{"app":{"build":"42","name":"Demo Shop","namespace":"com.example'
    '.demoshop","version":"1.4.2"},"traits":{"anonymousId":"8d872292-709c-4f6c-9fd0-ae5a1d8ac8f5","em'
    'ail":"jane@example.com","firstname":"Jane","userId":"u-1001","id":"u-1001","plan":"pro","logins"'
    ':42.0},"library":{"name":"com.rudderstack.android.sdk.core","version":"1.28.0"},"os":{"name":"An'
    'droid","version":"14"},"screen":{"density":420,"width":1080,"height":2400},"userAgent":"Dalvik/2'
    '.1.0 (Linux; U; Android 14; Pixel 7 Build/UQ1A.240205.004)","locale":"en-US","device":{"id":"f2b'
    '6c1d0a9e84c37","manufacturer":"Google","model":"Pixel 7","name":"panther","type":"Android","adTr'
    'ackingEnabled":false},"network":{"carrier":"Orange F","wifi":true,"bluetooth":false,"cellular":f'
    'alse},"timezone":"Europe/Paris","sessionId":1796112000,"sessionStart":true},"type":"identify","o'
    'riginalTimestamp":"2026-12-01T08:00:00.101Z","anonymousId":"8d872292-709c-4f6c-9fd0-ae5a1d8ac8f5'
    '","userId":"u-1001","event":"identify","integrations":{"All":true},"sentAt":"2026-12-01T07:55:30'
    '.635Z"},{"messageId":"3b0c7f5e-1d2a-4c4e-9a57-0f6c2a1b9e02","channel":"mobile","context":{"app":'
    '{"build":"42","name":"Demo Shop","namespace":"com.example.demoshop","version":"1.4.2"},"traits":'
    '{"anonymousId":"8d872292-709c-4f6c-9fd0-ae5a1d8ac8f5","email":"jane@example.com","firstname":"Ja'
    'ne","userId":"u-1001","id":"u-1001","plan":"pro","logins":42.0},"library":{"name":"com.ruddersta'
    'ck.android.sdk.core","version":"1.28.0"},"os":{"name":"Android","version":"14"},"screen":{"densi'
    'ty":420,"width":1080,"height":2400},"userAgent":"Dalvik/2.1.0 (Linux; U; Android 14; Pixel 7 Bui'
    'ld/UQ1A.240205.004)","locale":"en-US","device":{"id":"f2b6c1d0a9e84c37","manufacturer":"Google",'
    '"model":"Pixel 7","name":"panther","type":"Android","adTrackingEnabled":false},"network":{"carri'
    'er":"Orange F","wifi":true,"bluetooth":false,"cellular":false},"timezone":"Europe/Paris","sessio'
    'nId":1796112000},"type":"track","originalTimestamp":"2026-12-01T08:00:01.202Z","anonymousId":"8d'
    '872292-709c-4f6c-9fd0-ae5a1d8ac8f5","userId":"u-1001","event":"Order Completed","properties":{"o'
    'rder_id":"o-77","revenue":9.99,"currency":"EUR","items":3},"integrations":{"All":true},"sentAt":'
    '"2026-12-01T07:55:30.635Z"},{"messageId":"3b0c7f5e-1d2a-4c4e-9a57-0f6c2a1b9e03","channel":"mobil'
    'e","context":{"app":{"build":"42","name":"Demo Shop","namespace":"com.example.demoshop","version'
    '":"1.4.2"},"traits":{"anonymousId":"8d872292-709c-4f6c-9fd0-ae5a1d8ac8f5","email":"jane@example.'
    'com","firstname":"Jane","userId":"u-1001","id":"u-1001","plan":"pro","logins":42.0},"library":{"'
    'name":"com.rudderstack.android.sdk.core","version":"1.28.0"},"os":{"name":"Android","version":"1'
    '4"},"screen":{"density":420,"width":1080,"height":2400},"userAgent":"Dalvik/2.1.0 (Linux; U; And'
    'roid 14; Pixel 7 Build/UQ1A.240205.004)","locale":"en-US","device":{"id":"f2b6c1d0a9e84c37","man'
    'ufacturer":"Google","model":"Pixel 7","name":"panther","type":"Android","adTrackingEnabled":fals'
    'e},"network":{"carrier":"Orange F","wifi":true,"bluetooth":false,"cellular":false},"timezone":"E'
    'urope/Paris","sessionId":1796112000},"type":"screen","originalTimestamp":"2026-12-01T08:00:02.30'
    '3Z","anonymousId":"8d872292-709c-4f6c-9fd0-ae5a1d8ac8f5","userId":"u-1001","event":"Checkout","p'
    'roperties":{"step":2,"name":"Checkout"},"integrations":{"All":true},"sentAt":"2026-12-01T07:55:3'
    '0.635Z"}]}'
)

IOS_BODY = (
    '{"sentAt":"2026-12-01T07:55:45.670Z","batch":[{"messageId":"1c9e6a2b-3d4f-4a5b-8c7d-9e0f1a2b3c01'
    '","channel":"mobile","context":{"app":{"build":"42","name":"DemoShop","namespace":"com.example.d'
    'emoshop","version":"1.4.2"},"traits":{"anonymousId":"8d872292-709c-4f6c-9fd0-ae5a1d8ac8f5","user'
    'Id":"u-1001","email":"jane@example.com","firstname":"Jane","plan":"pro","logins":42},"library":{'
    '"name":"rudder-ios-library","version":"1.31.0"},"os":{"name":"iOS","version":"17.5.1"},"screen":'
    '{"density":3,"height":844,"width":390},"locale":"en-US","device":{"id":"5c3e2b1a-7d9f-4e60-8a21-'
    '3f4b5c6d7e8f","manufacturer":"Apple","model":"iPhone14,5","name":"iPhone","type":"iOS","attTrack'
    'ingStatus":0},"network":{"wifi":true,"cellular":false},"timezone":"Europe/Paris","sessionId":179'
    '6112000,"sessionStart":true},"type":"identify","originalTimestamp":"2026-12-01T08:00:00.101Z","a'
    'nonymousId":"8d872292-709c-4f6c-9fd0-ae5a1d8ac8f5","userId":"u-1001","event":"identify","integra'
    'tions":{"All":true},"sentAt":"2026-12-01T07:55:45.670Z"},{"messageId":"1c9e6a2b-3d4f-4a5b-8c7d-9'
    'e0f1a2b3c02","channel":"mobile","context":{"app":{"build":"42","name":"DemoShop","namespace":"co'
    'm.example.demoshop","version":"1.4.2"},"traits":{"anonymousId":"8d872292-709c-4f6c-9fd0-ae5a1d8a'
    'c8f5","userId":"u-1001","email":"jane@example.com","firstname":"Jane","plan":"pro","logins":42},'
    '"library":{"name":"rudder-ios-library","version":"1.31.0"},"os":{"name":"iOS","version":"17.5.1"'
    '},"screen":{"density":3,"height":844,"width":390},"locale":"en-US","device":{"id":"5c3e2b1a-7d9f'
    '-4e60-8a21-3f4b5c6d7e8f","manufacturer":"Apple","model":"iPhone14,5","name":"iPhone","type":"iOS'
    '","attTrackingStatus":0},"network":{"wifi":true,"cellular":false},"timezone":"Europe/Paris","ses'
    'sionId":1796112000},"type":"track","originalTimestamp":"2026-12-01T08:00:01.202Z","anonymousId":'
    '"8d872292-709c-4f6c-9fd0-ae5a1d8ac8f5","userId":"u-1001","properties":{"order_id":"o-77","revenu'
    'e":9.99,"currency":"EUR","items":3},"event":"Order Completed","integrations":{"All":true},"sentA'
    't":"2026-12-01T07:55:45.670Z"},{"messageId":"1c9e6a2b-3d4f-4a5b-8c7d-9e0f1a2b3c03","channel":"mo'
    'bile","context":{"app":{"build":"42","name":"DemoShop","namespace":"com.example.demoshop","versi'
    'on":"1.4.2"},"traits":{"anonymousId":"8d872292-709c-4f6c-9fd0-ae5a1d8ac8f5","userId":"u-1001","e'
    'mail":"jane@example.com","firstname":"Jane","plan":"pro","logins":42},"library":{"name":"rudder-'
    'ios-library","version":"1.31.0"},"os":{"name":"iOS","version":"17.5.1"},"screen":{"density":3,"h'
    'eight":844,"width":390},"locale":"en-US","device":{"id":"5c3e2b1a-7d9f-4e60-8a21-3f4b5c6d7e8f","'
    'manufacturer":"Apple","model":"iPhone14,5","name":"iPhone","type":"iOS","attTrackingStatus":0},"'
    'network":{"wifi":true,"cellular":false},"timezone":"Europe/Paris","sessionId":1796112000},"type"'
    ':"screen","originalTimestamp":"2026-12-01T08:00:02.303Z","anonymousId":"8d872292-709c-4f6c-9fd0-'
    'ae5a1d8ac8f5","userId":"u-1001","properties":{"step":2,"name":"Checkout"},"event":"Checkout","in'
    'tegrations":{"All":true},"sentAt":"2026-12-01T07:55:45.670Z"}]}'
)

KOTLIN_BODY = (
    '{"batch":[{"type":"identify","messageId":"7e1d2c3b-4a59-4687-9a0b-c1d2e3f4a501","context":{"libr'
    'ary":{"name":"com.rudderstack.sdk.kotlin.android","version":"1.6.0"},"device":{"id":"f2b6c1d0a9e'
    '84c37","manufacturer":"Google","model":"Pixel 7","name":"panther","type":"Android"},"app":{"name'
    '":"Demo Shop","namespace":"com.example.demoshop","version":"1.4.2","build":"42"},"network":{"car'
    'rier":"Orange F","cellular":false,"wifi":true,"bluetooth":false},"locale":"en-US","os":{"name":"'
    'Android","version":"14"},"screen":{"density":420,"height":2400,"width":1080},"timezone":"Europe/'
    'Paris","sessionId":1796112000,"traits":{"email":"jane@example.com","firstname":"Jane","plan":"pr'
    'o","logins":42},"sessionStart":true},"originalTimestamp":"2026-12-01T08:00:00.101Z","sentAt":"20'
    '26-12-01T07:55:31.105Z","userId":"u-1001","integrations":{"All":true},"anonymousId":"8d872292-70'
    '9c-4f6c-9fd0-ae5a1d8ac8f5","channel":"mobile","event":"identify"},{"event":"Order Completed","pr'
    'operties":{"order_id":"o-77","revenue":9.99,"currency":"EUR","items":3},"type":"track","messageI'
    'd":"7e1d2c3b-4a59-4687-9a0b-c1d2e3f4a502","context":{"library":{"name":"com.rudderstack.sdk.kotl'
    'in.android","version":"1.6.0"},"device":{"id":"f2b6c1d0a9e84c37","manufacturer":"Google","model"'
    ':"Pixel 7","name":"panther","type":"Android"},"app":{"name":"Demo Shop","namespace":"com.example'
    '.demoshop","version":"1.4.2","build":"42"},"network":{"carrier":"Orange F","cellular":false,"wif'
    'i":true,"bluetooth":false},"locale":"en-US","os":{"name":"Android","version":"14"},"screen":{"de'
    'nsity":420,"height":2400,"width":1080},"timezone":"Europe/Paris","sessionId":1796112000,"traits"'
    ':{"email":"jane@example.com","firstname":"Jane","plan":"pro","logins":42}},"originalTimestamp":"'
    '2026-12-01T08:00:01.202Z","sentAt":"2026-12-01T07:55:31.105Z","userId":"u-1001","integrations":{'
    '"All":true},"anonymousId":"8d872292-709c-4f6c-9fd0-ae5a1d8ac8f5","channel":"mobile"},{"event":"C'
    'heckout","properties":{"step":2,"name":"Checkout"},"type":"screen","messageId":"7e1d2c3b-4a59-46'
    '87-9a0b-c1d2e3f4a503","context":{"library":{"name":"com.rudderstack.sdk.kotlin.android","version'
    '":"1.6.0"},"device":{"id":"f2b6c1d0a9e84c37","manufacturer":"Google","model":"Pixel 7","name":"p'
    'anther","type":"Android"},"app":{"name":"Demo Shop","namespace":"com.example.demoshop","version"'
    ':"1.4.2","build":"42"},"network":{"carrier":"Orange F","cellular":false,"wifi":true,"bluetooth":'
    'false},"locale":"en-US","os":{"name":"Android","version":"14"},"screen":{"density":420,"height":'
    '2400,"width":1080},"timezone":"Europe/Paris","sessionId":1796112000,"traits":{"email":"jane@exam'
    'ple.com","firstname":"Jane","plan":"pro","logins":42}},"originalTimestamp":"2026-12-01T08:00:02.'
    '303Z","sentAt":"2026-12-01T07:55:31.105Z","userId":"u-1001","integrations":{"All":true},"anonymo'
    'usId":"8d872292-709c-4f6c-9fd0-ae5a1d8ac8f5","channel":"mobile"}],"sentAt":"2026-12-01T07:55:31.'
    '105Z"}'
)


def _swift_body():
    """Swift 1.3.1: ``{"batch":[e1,e2],"sentAt":...}`` with each event pretty-printed, sorted keys."""
    events = json.loads(KOTLIN_BODY)["batch"]
    out = []
    for i, event in enumerate(events):
        event = dict(event)
        context = dict(event["context"])
        context["library"] = {"name": "rudder-sdk-swift", "version": "1.3.1"}
        context["os"] = {"name": "iOS", "version": "17.5.1"}
        context["device"] = {"id": "5c3e2b1a-7d9f-4e60-8a21-3f4b5c6d7e8f", "manufacturer": "Apple",
                             "model": "iPhone14,5", "name": "iPhone", "type": "iOS"}
        context["network"] = {"wifi": True, "cellular": False}
        context["screen"] = {"density": 3, "width": 390, "height": 844}
        context["app"] = {"name": "DemoShop", "namespace": "com.example.demoshop", "version": "1.4.2",
                          "build": "42"}
        event["context"] = context
        event["messageId"] = "5f1e0d2c-3b4a-4958-8776-a5b4c3d2e1f%d" % i
        out.append(json.dumps(event, sort_keys=True, indent=2, separators=(",", " : ")))
    return '{"batch":[' + ",".join(out) + '],"sentAt":"2026-12-01T07:55:50.210Z"}'


SWIFT_BODY = _swift_body()

#: The data-plane request of each SDK: body, framing and headers (doc/sdks.md).
SDKS = {
    "android": {"body": ANDROID_BODY, "gzip": True, "chunked": False,
                "anonymous_header": base64.b64encode(ANONYMOUS_ID.encode()).decode(),
                "headers": [("Accept-Encoding", "gzip"), ("Content-Type", "application/json"),
                            ("User-Agent", "Dalvik/2.1.0 (Linux; U; Android 14; Pixel 7 Build/UQ1A.240205.004)"),
                            ("Connection", "Keep-Alive")],
                "source_config": "/sourceConfig?p=android&v=1.28.0&bv=34", "config_headers": [],
                "library": ("com.rudderstack.android.sdk.core", "1.28.0")},
    "ios": {"body": IOS_BODY, "gzip": True, "chunked": False,
            "anonymous_header": base64.b64encode((ANONYMOUS_ID + ":").encode()).decode(),
            "headers": [("Content-Type", "application/json"), ("Accept", "*/*"),
                        ("Accept-Language", "en-GB,en;q=0.9"), ("Accept-Encoding", "gzip, deflate, br"),
                        ("User-Agent", "DemoShop/42 CFNetwork/1496.0.7 Darwin/23.5.0")],
            "source_config": "/sourceConfig?p=ios&v=1.31.0", "config_headers": [],
            "library": ("rudder-ios-library", "1.31.0")},
    "kotlin": {"body": KOTLIN_BODY, "gzip": False, "chunked": True,
               "anonymous_header": base64.b64encode((ANONYMOUS_ID + ":").encode()).decode(),
               "headers": [("Content-Type", "application/json"), ("User-Agent", "Java/17.0.15"),
                           ("Accept", "text/html, image/gif, image/jpeg, */*; q=0.2"),
                           ("Connection", "keep-alive")],
               # the write key goes unencoded into the query (SourceConfigManager.kt)
               "source_config": "/sourceConfig?p=android&v=1.6.0&writeKey={key}&bv=34", "config_headers": [],
               "library": ("com.rudderstack.sdk.kotlin.android", "1.6.0")},
    "swift": {"body": SWIFT_BODY, "gzip": False, "chunked": False,
              "anonymous_header": ANONYMOUS_ID,
              "headers": [("Content-Type", "application/json")],
              "source_config": "/sourceConfig?bv=17.5.1&v=1.3.1&p=swift&writeKey={key}",
              "config_headers": [("Content-Type", "application/json")],
              "library": ("rudder-sdk-swift", "1.3.1")},
}


def personalise(body, tag):
    """``body`` with messageIds and the userId made unique to ``tag`` (same length and shape)."""
    data = json.loads(body)
    text = body
    for event in data["batch"]:
        mid = event["messageId"]
        text = text.replace(mid, f"{tag}-{mid[len(tag) + 1:]}")
    return text.replace(USER_ID, f"{USER_ID}-{tag}")


def request_bytes(path, host, headers, body, gzip_body, chunked):
    """The request as the SDK frames it: gzip + Content-Length, or chunked without gzip."""
    payload = body.encode("utf-8")
    if gzip_body:
        payload = gzip.compress(payload)
        headers = headers + [("Content-Encoding", "gzip")]
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}"] + [f"{k}: {v}" for k, v in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        # HttpURLConnection.setChunkedStreamingMode(0): default 4096-byte chunks
        framed = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 4096]), payload[i:i + 4096])
                          for i in range(0, len(payload), 4096)) + b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(payload)}")
        framed = payload
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + framed


def get_bytes(path, host, headers):
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
