"""X-Twilio-Signature, checked both ways against the official twilio-python RequestValidator."""

from __future__ import annotations

import pytest
from twilio.request_validator import RequestValidator

from bus.errors import VerificationError
from connectors.twilio.signature import (
    algorithm_of,
    body_sha256,
    compute_signature,
    sign_json,
    url_variants,
    verify_signature,
)

TOKEN = "0123456789abcdef0123456789abcdef"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "CallStatus": "completed",
    "From": "+12349013030",
    "To": "+18005551212",
    "ForwardedFrom": "",  # Twilio sends empty parameters; they are signed too
    "CallerCity": "São Paulo",
}
URLS = [
    pytest.param("https://bus.example/hooks/voice", id="https-no-port"),
    pytest.param("https://bus.example:443/hooks/voice", id="https-default-port"),
    pytest.param("http://bus.example:8080/hooks/voice?tl_key=01HZ-1&x=a%20b", id="http-port-query"),
]
BARE_QUERY = pytest.param("https://bus.example/hooks/voice?", id="bare-question-mark")


def test_documented_example_vector():
    """Twilio's worked example (docs/usage/security, token 12345) gives the published signature."""
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
              "From": "+12349013030", "To": "+18005551212"}
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert compute_signature("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    verify_signature("12345", url, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", params=params)


@pytest.mark.parametrize("url", [*URLS, BARE_QUERY])
def test_form_signature_equals_official(url):
    """Our form signature is byte-for-byte RequestValidator.compute_signature, both algorithms."""
    validator = RequestValidator(TOKEN)
    for algorithm in ("HMAC_SHA1", "HMAC_SHA256"):
        assert compute_signature(TOKEN, url, PARAMS, algorithm) == validator.compute_signature(url, PARAMS, algorithm)


@pytest.mark.parametrize("url", URLS)
def test_official_validator_accepts_ours(url):
    """RequestValidator.validate accepts what we sign, form and bodySHA256 variants."""
    validator = RequestValidator(TOKEN)
    assert validator.validate(url, PARAMS, compute_signature(TOKEN, url, PARAMS))
    body = '{"CallSid":"CA1","CallStatus":"ringing"}'
    signed_url, sig = sign_json(TOKEN, url, body.encode())
    assert validator.validate(signed_url, body, sig)


@pytest.mark.parametrize("url", [*URLS, BARE_QUERY])
@pytest.mark.parametrize("port", ["as-is", "port-toggled"])
def test_we_accept_official_form_signature(url, port):
    """A RequestValidator signature verifies, whether Twilio signed with or without the port."""
    without, with_port = url_variants(url)
    signed_over = (with_port if url == without else without) if port == "port-toggled" else url
    sig = RequestValidator(TOKEN).compute_signature(signed_over, PARAMS)
    verify_signature(TOKEN, url, sig, params=list(PARAMS.items()))


def test_we_accept_official_json_signature():
    """A bodySHA256 webhook signed by RequestValidator's rules verifies with the raw body."""
    body = b'{"CallSid":"CA1234567890ABCDE","Caller":"+12349013030"}'
    validator = RequestValidator(TOKEN)
    url = f"https://bus.example/hooks/voice?bodySHA256={validator.compute_hash(body.decode())}"
    assert body_sha256(body) == validator.compute_hash(body.decode())
    verify_signature(TOKEN, url, validator.compute_signature(url, {}), body=body)


def test_multi_valued_params_match_official():
    """Repeated parameters are signed as each distinct value, sorted, like the validator's MultiDict path."""

    class Multi(dict):
        def getall(self, name):
            return self[name]

    pairs = [("StatusCallbackEvent", "ringing"), ("StatusCallbackEvent", "answered"), ("To", "+1")]
    official = RequestValidator(TOKEN).compute_signature(
        "https://x.example/a", Multi(StatusCallbackEvent=["ringing", "answered"], To=["+1"])
    )
    assert compute_signature(TOKEN, "https://x.example/a", pairs) == official


@pytest.mark.parametrize(
    ("case", "message"),
    [
        pytest.param("missing", "missing header X-Twilio-Signature", id="missing"),
        pytest.param("wrong-token", "does not match", id="wrong-token"),
        pytest.param("changed-param", "does not match", id="changed-param"),
        pytest.param("other-url", "does not match", id="other-url"),
    ],
)
def test_form_rejections(case, message):
    """Missing signature, wrong key, altered parameter or another URL are refused, naming the cause."""
    url = "https://bus.example/hooks/voice"
    sig = RequestValidator(TOKEN).compute_signature(url, PARAMS)
    params, check_url = dict(PARAMS), url
    if case == "missing":
        sig = ""
    elif case == "wrong-token":
        sig = RequestValidator("f" * 32).compute_signature(url, PARAMS)
    elif case == "changed-param":
        params["CallStatus"] = "busy"
    else:
        check_url = "https://bus.example/hooks/other"
    with pytest.raises(VerificationError, match=message) as info:
        verify_signature(TOKEN, check_url, sig, params=params)
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        pytest.param("tampered-body", "bodySHA256 in the URL does not match", id="tampered-body"),
        pytest.param("no-hash", "without bodySHA256", id="no-hash-in-url"),
    ],
)
def test_json_rejections(case, message):
    """A JSON body that does not hash to bodySHA256, or a URL without it, is refused."""
    body = b'{"CallSid":"CA1"}'
    url, sig = sign_json(TOKEN, "https://bus.example/hooks/voice", body)
    if case == "tampered-body":
        body = b'{"CallSid":"CA2"}'
    else:
        url = "https://bus.example/hooks/voice"
    with pytest.raises(VerificationError, match=message):
        verify_signature(TOKEN, url, sig, body=body)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("", "HMAC_SHA1"), ("key=webhooks_sharedkey_1,algorithm=HMAC_SHA256", "HMAC_SHA256"), ("key=k", "HMAC_SHA1")],
    ids=["absent", "sha256", "no-algorithm"],
)
def test_algorithm_of_settings_header(header, expected):
    """X-Twilio-Webhooks-Signature-Settings selects the algorithm; absent means HMAC_SHA1."""
    assert algorithm_of(header) == expected


def test_unknown_algorithm_is_refused():
    """An algorithm we do not know fails verification instead of being skipped."""
    with pytest.raises(VerificationError, match="only HMAC_SHA1 and HMAC_SHA256"):
        verify_signature(TOKEN, "https://x.example/", "sig", params={}, algorithm="HMAC_MD5")
