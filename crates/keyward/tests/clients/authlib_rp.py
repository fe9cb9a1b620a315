"""A relying party in another language: Authlib (Python) runs keyward's authorization code
flow with PKCE, as an app would, and verifies what it gets with its own code.

    python3 authlib_rp.py ISSUER CLIENT_ID USERNAME PASSWORD

The "browser" is a requests session (cookies kept, redirects looked at one by one): it signs
in on keyward's sign-in form and comes back to the authorization request, whose answer goes
to a loopback redirect URI on an ephemeral port (RFC 8252), which nothing needs to listen on:
Authlib reads the code from the URL. Prints one JSON line of what it verified.
"""

import json
import sys
from urllib.parse import parse_qs, urljoin, urlparse

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.jose import JsonWebKey, jwt
from authlib.oidc.core import CodeIDToken, UserInfo


def main():
    issuer, client_id, username, password = sys.argv[1:5]
    meta = requests.get(issuer + "/.well-known/openid-configuration", timeout=10).json()
    assert meta["issuer"] == issuer, meta
    redirect_uri = "http://127.0.0.1:53682/callback"
    rp = OAuth2Session(
        client_id,
        redirect_uri=redirect_uri,
        scope="openid profile offline_access",
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    verifier = generate_token(64)
    nonce = generate_token(24)
    url, state = rp.create_authorization_url(
        meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce
    )

    browser = requests.Session()
    res = browser.get(url, allow_redirects=False, timeout=10)
    assert res.status_code == 303, res.status_code
    sign_in = urljoin(issuer, res.headers["location"])
    next_ = parse_qs(urlparse(sign_in).query)["next"][0]
    res = browser.post(
        urljoin(issuer, "/v1/sessions"),
        data={"username": username, "password": password, "next": next_},
        allow_redirects=False,
        timeout=10,
    )
    assert res.status_code == 303, res.status_code
    res = browser.get(urljoin(issuer, res.headers["location"]), allow_redirects=False, timeout=10)
    assert res.status_code == 302, res.status_code
    callback = res.headers["location"]
    assert callback.startswith(redirect_uri + "?"), callback
    assert parse_qs(urlparse(callback).query)["iss"] == [issuer]

    # Authlib checks `state` against the callback, sends the verifier, and parses the answer.
    token = rp.fetch_token(
        meta["token_endpoint"],
        authorization_response=callback,
        state=state,
        code_verifier=verifier,
    )
    jwks = JsonWebKey.import_key_set(requests.get(meta["jwks_uri"], timeout=10).json())
    claims = jwt.decode(
        token["id_token"],
        jwks,
        claims_cls=CodeIDToken,
        claims_options={"iss": {"essential": True, "value": issuer}},
        claims_params={"nonce": nonce, "client_id": client_id, "access_token": token["access_token"]},
    )
    # iss, aud, exp, iat, nonce and at_hash.
    claims.validate()
    assert jwt.decode(token["id_token"], jwks).header["alg"] == "RS256"

    info = UserInfo(rp.get(meta["userinfo_endpoint"], timeout=10).json())
    assert info["sub"] == claims["sub"], info

    refreshed = rp.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
    assert refreshed["refresh_token"] != token["refresh_token"]
    print(
        json.dumps(
            {
                "sub": claims["sub"],
                "preferred_username": claims.get("preferred_username"),
                "amr": claims.get("amr"),
                "scope": token["scope"],
                "refreshed_scope": refreshed.get("scope"),
                "userinfo_username": info.get("preferred_username"),
            }
        )
    )


if __name__ == "__main__":
    main()
