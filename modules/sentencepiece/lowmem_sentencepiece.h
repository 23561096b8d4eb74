/* The C interface of lowmem's sentencepiece module (see shim.cpp for why it is
   a separately loaded module). Used by src/text/sentencepiece.cpp. */
#ifndef LOWMEM_SENTENCEPIECE_H
#define LOWMEM_SENTENCEPIECE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LOWMEM_SPM_ABI_VERSION 3
#define LOWMEM_SPM_API __attribute__((visibility("default")))

enum {
  LOWMEM_SPM_CONTROL = 1,
  LOWMEM_SPM_UNKNOWN = 2,
  LOWMEM_SPM_BYTE = 8,
  LOWMEM_SPM_UNUSED = 16
};

typedef struct lowmem_spm lowmem_spm;
typedef void (*lowmem_spm_ids_fn)(void* ctx, const int* ids, size_t n);
typedef void (*lowmem_spm_text_fn)(void* ctx, const char* text, size_t n);
/* One piece: its id and the byte range [begin, end) of the input it covers. */
typedef void (*lowmem_spm_piece_fn)(void* ctx, int id, size_t begin, size_t end);

LOWMEM_SPM_API int lowmem_spm_abi_version(void);
LOWMEM_SPM_API lowmem_spm* lowmem_spm_load(const char* bytes, size_t n, char* err, size_t errcap);
LOWMEM_SPM_API void lowmem_spm_free(lowmem_spm* m);
LOWMEM_SPM_API int lowmem_spm_piece_size(const lowmem_spm* m);
LOWMEM_SPM_API const char* lowmem_spm_id_to_piece(const lowmem_spm* m, int id, size_t* len);
LOWMEM_SPM_API int lowmem_spm_piece_to_id(const lowmem_spm* m, const char* s, size_t n);
LOWMEM_SPM_API int lowmem_spm_piece_type(const lowmem_spm* m, int id);
LOWMEM_SPM_API void lowmem_spm_special_ids(const lowmem_spm* m, int* bos, int* eos, int* pad, int* unk);
LOWMEM_SPM_API int lowmem_spm_encode(const lowmem_spm* m, const char* text, size_t n,
                      lowmem_spm_ids_fn emit, void* ctx, char* err, size_t errcap);
LOWMEM_SPM_API int lowmem_spm_encode_offsets(const lowmem_spm* m, const char* text, size_t n,
                      lowmem_spm_piece_fn emit, void* ctx, char* err, size_t errcap);
LOWMEM_SPM_API int lowmem_spm_decode(const lowmem_spm* m, const int* ids, size_t n,
                      lowmem_spm_text_fn emit, void* ctx, char* err, size_t errcap);

/* Trains a model (sentencepiece's SentencePieceTrainer::Train) on the
   sentences [texts[i], texts[i] + lengths[i]) with the trainer/normalizer
   fields keys[k] = values[k] (sentencepiece's flag names); emits the
   serialized ModelProto once. Returns 0, or -1 with the reason in err. */
LOWMEM_SPM_API int lowmem_spm_train(const char* const* keys, const char* const* values,
                      size_t nkv, const char* const* texts, const size_t* lengths,
                      size_t n, lowmem_spm_text_fn emit, void* ctx, char* err,
                      size_t errcap);

#ifdef __cplusplus
}
#endif

#endif
