#!/usr/bin/env bash
# The seed's openssl commands, verbatim (interop/README.md), run in the current
# folder: RSA-4096 CA, server and client (an X.509 v1 certificate with no extensions).
# Used by the interop tests (tests/conftest.py) and bench/pki_speed.py.
set -e
openssl genrsa -out ca.key 4096
openssl req -new -x509 -days 3650 -key ca.key -subj "/C=TH/ST=RB/O=IT Sec/CN=CA" -out ca.crt
openssl req -newkey rsa:4096 -nodes -keyout server.key -subj "/C=TH/ST=RB/O=Dev/CN=localhost" -out server.csr
openssl x509 -req -extfile <(printf "subjectAltName=DNS:localhost,DNS:www.example.com,IP.1:127.0.0.1") -days 365 -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt
openssl genrsa -out client.key 4096
openssl req -new -key client.key -out client.csr -subj "/C=TH/ST=RB/O=Dev/CN=client"
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -out client.crt -days 365 -sha256 -CAcreateserial
