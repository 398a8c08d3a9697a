#include "ccurl.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

static struct {
    CURLcode (*global_init)(long);
    CURL *(*easy_init)(void);
    void (*easy_cleanup)(CURL *);
    CURLcode (*easy_perform)(CURL *);
    const char *(*easy_strerror)(CURLcode);
    CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
    CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
    struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
    void (*slist_free_all)(struct curl_slist *);
    time_t (*getdate)(const char *, const time_t *);
} curl;

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_loaded;
static char curl_error[256];

#define LOAD(field, name)                                                                       \
    do {                                                                                        \
        *(void **)(&curl.field) = dlsym(library, name);                                         \
        if (curl.field == NULL) {                                                               \
            snprintf(curl_error, sizeof curl_error, "libcurl.so.4 has no %s", name);            \
            return;                                                                             \
        }                                                                                       \
    } while (0)

static void load_curl(void) {
    void *library = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
    if (library == NULL) {
        const char *why = dlerror();
        snprintf(curl_error, sizeof curl_error, "cannot load libcurl.so.4: %s", why ? why : "unknown");
        return;
    }
    LOAD(global_init, "curl_global_init");
    LOAD(easy_init, "curl_easy_init");
    LOAD(easy_cleanup, "curl_easy_cleanup");
    LOAD(easy_perform, "curl_easy_perform");
    LOAD(easy_strerror, "curl_easy_strerror");
    LOAD(easy_setopt, "curl_easy_setopt");
    LOAD(easy_getinfo, "curl_easy_getinfo");
    LOAD(slist_append, "curl_slist_append");
    LOAD(slist_free_all, "curl_slist_free_all");
    LOAD(getdate, "curl_getdate");
    // curl_global_init is not thread-safe: run it here, once, under pthread_once.
    CURLcode code = curl.global_init(CURL_GLOBAL_DEFAULT);
    if (code != CURLE_OK) {
        snprintf(curl_error, sizeof curl_error, "curl_global_init failed: %s", curl.easy_strerror(code));
        return;
    }
    curl_loaded = 1;
}

int credfs_curl_load(void) {
    pthread_once(&curl_once, load_curl);
    return curl_loaded;
}

const char *credfs_curl_load_error(void) { return curl_error; }

// Callers load first (credfs_curl_load); these are only called once it returned 1.
CURL *credfs_curl_easy_init(void) { return curl.easy_init(); }
void credfs_curl_easy_cleanup(CURL *handle) { curl.easy_cleanup(handle); }
CURLcode credfs_curl_easy_perform(CURL *handle) { return curl.easy_perform(handle); }
const char *credfs_curl_easy_strerror(CURLcode code) { return curl.easy_strerror(code); }
struct curl_slist *credfs_curl_slist_append(struct curl_slist *list, const char *line) {
    return curl.slist_append(list, line);
}
void credfs_curl_slist_free_all(struct curl_slist *list) { curl.slist_free_all(list); }
time_t credfs_curl_getdate(const char *text) { return curl.getdate(text, NULL); }

CURLcode credfs_curl_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl.easy_setopt(handle, option, value);
}
CURLcode credfs_curl_setopt_string(CURL *handle, CURLoption option, const char *value) {
    return curl.easy_setopt(handle, option, value);
}
CURLcode credfs_curl_setopt_pointer(CURL *handle, CURLoption option, void *value) {
    return curl.easy_setopt(handle, option, value);
}
CURLcode credfs_curl_setopt_slist(CURL *handle, CURLoption option, struct curl_slist *value) {
    return curl.easy_setopt(handle, option, value);
}
CURLcode credfs_curl_setopt_offset(CURL *handle, CURLoption option, curl_off_t value) {
    return curl.easy_setopt(handle, option, value);
}
CURLcode credfs_curl_setopt_callback(CURL *handle, CURLoption option, credfs_curl_data_cb value) {
    return curl.easy_setopt(handle, option, value);
}
CURLcode credfs_curl_setopt_progress(CURL *handle, CURLoption option, credfs_curl_progress_cb value) {
    return curl.easy_setopt(handle, option, value);
}
CURLcode credfs_curl_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl.easy_getinfo(handle, info, value);
}
CURLcode credfs_curl_getinfo_offset(CURL *handle, CURLINFO info, curl_off_t *value) {
    return curl.easy_getinfo(handle, info, value);
}

// ---- libcrypto: HMAC(EVP_sha1()) for the RPC signature ----

typedef const void EVP_MD_opaque;
static struct {
    const EVP_MD_opaque *(*sha1)(void);
    unsigned char *(*hmac)(const EVP_MD_opaque *, const void *, int, const unsigned char *, size_t,
                           unsigned char *, unsigned int *);
} crypto;
static pthread_once_t crypto_once = PTHREAD_ONCE_INIT;
static int crypto_loaded;

static void load_crypto(void) {
    void *library = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
    if (library == NULL) return;
    *(void **)(&crypto.sha1) = dlsym(library, "EVP_sha1");
    *(void **)(&crypto.hmac) = dlsym(library, "HMAC");
    crypto_loaded = crypto.sha1 != NULL && crypto.hmac != NULL;
}

int credfs_hmac_sha1(const void *key, int key_length, const unsigned char *data, size_t data_length,
                     unsigned char out[20]) {
    pthread_once(&crypto_once, load_crypto);
    if (!crypto_loaded) return 0;
    unsigned int length = 0;
    if (crypto.hmac(crypto.sha1(), key, key_length, data, data_length, out, &length) == NULL) return 0;
    return length == 20;
}
