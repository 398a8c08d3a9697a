#ifndef CREDFS_CCURL_H
#define CREDFS_CCURL_H

// libcurl (HTTP) and libcrypto's HMAC-SHA1, loaded with dlopen on first use.
//
// Linking Debian's libcurl pulls in some 30 libraries whose constructors (gnutls, p11-kit,
// krb5, ...) cost about 9 ms at every exec and several MiB of RSS, also for the sources
// that never speak HTTP (demo, env, process) and for the short-lived `credfs mount` parent.
// So nothing links them: the first HTTP request (or the first RPC signature) loads
// libcurl.so.4 (and libcrypto.so.3), once, and every call goes through the typed wrappers
// below (curl_easy_setopt and curl_easy_getinfo are variadic and do not import into Swift).

#include <curl/curl.h>
#include <stddef.h>
#include <time.h>

typedef size_t (*credfs_curl_data_cb)(char *data, size_t size, size_t count, void *context);
typedef int (*credfs_curl_progress_cb)(void *context, curl_off_t download_total, curl_off_t download_now,
                                       curl_off_t upload_total, curl_off_t upload_now);

// 1 once libcurl is loaded and initialised (curl_global_init), 0 if it cannot be; then
// credfs_curl_load_error() says why (one line).
int credfs_curl_load(void);
const char *credfs_curl_load_error(void);

CURL *credfs_curl_easy_init(void);
void credfs_curl_easy_cleanup(CURL *handle);
CURLcode credfs_curl_easy_perform(CURL *handle);
const char *credfs_curl_easy_strerror(CURLcode code);
struct curl_slist *credfs_curl_slist_append(struct curl_slist *list, const char *line);
void credfs_curl_slist_free_all(struct curl_slist *list);
time_t credfs_curl_getdate(const char *text);

CURLcode credfs_curl_setopt_long(CURL *handle, CURLoption option, long value);
CURLcode credfs_curl_setopt_string(CURL *handle, CURLoption option, const char *value);
CURLcode credfs_curl_setopt_pointer(CURL *handle, CURLoption option, void *value);
CURLcode credfs_curl_setopt_slist(CURL *handle, CURLoption option, struct curl_slist *value);
CURLcode credfs_curl_setopt_offset(CURL *handle, CURLoption option, curl_off_t value);
CURLcode credfs_curl_setopt_callback(CURL *handle, CURLoption option, credfs_curl_data_cb value);
CURLcode credfs_curl_setopt_progress(CURL *handle, CURLoption option, credfs_curl_progress_cb value);
CURLcode credfs_curl_getinfo_long(CURL *handle, CURLINFO info, long *value);
CURLcode credfs_curl_getinfo_offset(CURL *handle, CURLINFO info, curl_off_t *value);

// HMAC-SHA1 of `data` under `key` into `out` (20 bytes), with libcrypto's HMAC(EVP_sha1()).
// Returns 1 on success, 0 on failure (libcrypto.so.3 missing, or HMAC failed).
int credfs_hmac_sha1(const void *key, int key_length, const unsigned char *data, size_t data_length,
                     unsigned char out[20]);

#endif
