#ifndef CREDFS_CCRYPTO_SHIM_H
#define CREDFS_CCRYPTO_SHIM_H

// libcrypto, the OpenSSL that libcurl already links: only HMAC-SHA1 for the RPC signature.
#include <openssl/evp.h>
#include <openssl/hmac.h>

// HMAC-SHA1 of `data` under `key` into `out` (20 bytes). Returns 1 on success, 0 on failure.
static inline int credfs_hmac_sha1(const void *key, int key_length, const unsigned char *data, size_t data_length,
                                   unsigned char out[20]) {
    unsigned int length = 0;
    if (HMAC(EVP_sha1(), key, key_length, data, data_length, out, &length) == NULL) return 0;
    return length == 20;
}

#endif
