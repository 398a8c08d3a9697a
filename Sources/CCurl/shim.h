#ifndef CREDFS_CCURL_SHIM_H
#define CREDFS_CCURL_SHIM_H

#include <curl/curl.h>

// curl_easy_setopt and curl_easy_getinfo are variadic and do not import into Swift:
// one typed wrapper per argument type.

static inline CURLcode credfs_curl_global_init(void) {
    return curl_global_init(CURL_GLOBAL_DEFAULT);
}

typedef size_t (*credfs_curl_data_cb)(char *data, size_t size, size_t count, void *context);

static inline CURLcode credfs_curl_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode credfs_curl_setopt_string(CURL *handle, CURLoption option, const char *value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode credfs_curl_setopt_pointer(CURL *handle, CURLoption option, void *value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode credfs_curl_setopt_slist(CURL *handle, CURLoption option, struct curl_slist *value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode credfs_curl_setopt_offset(CURL *handle, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode credfs_curl_setopt_callback(CURL *handle, CURLoption option, credfs_curl_data_cb value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode credfs_curl_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}

static inline CURLcode credfs_curl_getinfo_offset(CURL *handle, CURLINFO info, curl_off_t *value) {
    return curl_easy_getinfo(handle, info, value);
}

#endif
