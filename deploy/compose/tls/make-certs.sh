#!/bin/sh
# A throw-away CA and server certificate for the compose TLS variant, and a web-config.yml with
# the user "prometheus" (password "change-me"). Real installations bring their own files.
set -eu
cd "$(dirname "$0")"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
  -keyout ca.key -out ca.crt -subj "/CN=iceprod-exporter compose CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout tls.key -out tls.csr -subj "/CN=iceprod-exporter"
printf 'subjectAltName=DNS:iceprod-exporter,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > tls.ext
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 90 \
  -extfile tls.ext -out tls.crt
rm -f tls.csr tls.ext ca.srl
# the container user (uid 10001) must read the key
chmod 0644 tls.key
cp web-config.example.yml web-config.yml
printf 'change-me' > scrape-password
