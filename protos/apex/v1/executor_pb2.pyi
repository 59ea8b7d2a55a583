from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_GPU: _ClassVar[Tier]
    TIER_CPU: _ClassVar[Tier]

class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_UNSPECIFIED: _ClassVar[Strategy]
    STRATEGY_GPU_ONLY: _ClassVar[Strategy]
    STRATEGY_OVERLAP: _ClassVar[Strategy]
    STRATEGY_PIPELINE: _ClassVar[Strategy]
TIER_GPU: Tier
TIER_CPU: Tier
STRATEGY_UNSPECIFIED: Strategy
STRATEGY_GPU_ONLY: Strategy
STRATEGY_OVERLAP: Strategy
STRATEGY_PIPELINE: Strategy

class ProfileProbe(_message.Message):
    __slots__ = ("kind", "tokens", "rows", "context", "bytes", "repeats")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    tokens: int
    rows: int
    context: int
    bytes: int
    repeats: int
    def __init__(self, kind: _Optional[str] = ..., tokens: _Optional[int] = ..., rows: _Optional[int] = ..., context: _Optional[int] = ..., bytes: _Optional[int] = ..., repeats: _Optional[int] = ...) -> None: ...

class ProfileProbeRequest(_message.Message):
    __slots__ = ("probe",)
    PROBE_FIELD_NUMBER: _ClassVar[int]
    probe: ProfileProbe
    def __init__(self, probe: _Optional[_Union[ProfileProbe, _Mapping]] = ...) -> None: ...

class ProfileProbeResult(_message.Message):
    __slots__ = ("seconds", "spread")
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    SPREAD_FIELD_NUMBER: _ClassVar[int]
    seconds: float
    spread: float
    def __init__(self, seconds: _Optional[float] = ..., spread: _Optional[float] = ...) -> None: ...

class CpuExecutorInfo(_message.Message):
    __slots__ = ("threads", "paths", "tier_ready", "steps", "path_calls", "attention_s", "kv_dtype")
    class PathCallsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    THREADS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    TIER_READY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    PATH_CALLS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_S_FIELD_NUMBER: _ClassVar[int]
    KV_DTYPE_FIELD_NUMBER: _ClassVar[int]
    threads: int
    paths: _containers.RepeatedScalarFieldContainer[str]
    tier_ready: bool
    steps: int
    path_calls: _containers.ScalarMap[str, int]
    attention_s: float
    kv_dtype: str
    def __init__(self, threads: _Optional[int] = ..., paths: _Optional[_Iterable[str]] = ..., tier_ready: _Optional[bool] = ..., steps: _Optional[int] = ..., path_calls: _Optional[_Mapping[str, int]] = ..., attention_s: _Optional[float] = ..., kv_dtype: _Optional[str] = ...) -> None: ...

class InitTierRequest(_message.Message):
    __slots__ = ("num_layers", "num_blocks", "block_size", "num_heads", "num_kv_heads", "head_dim", "kv_dtype", "io_dtype", "max_rows", "max_blocks_per_seq")
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_HEADS_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    KV_DTYPE_FIELD_NUMBER: _ClassVar[int]
    IO_DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_BLOCKS_PER_SEQ_FIELD_NUMBER: _ClassVar[int]
    num_layers: int
    num_blocks: int
    block_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    kv_dtype: str
    io_dtype: str
    max_rows: int
    max_blocks_per_seq: int
    def __init__(self, num_layers: _Optional[int] = ..., num_blocks: _Optional[int] = ..., block_size: _Optional[int] = ..., num_heads: _Optional[int] = ..., num_kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ..., kv_dtype: _Optional[str] = ..., io_dtype: _Optional[str] = ..., max_rows: _Optional[int] = ..., max_blocks_per_seq: _Optional[int] = ...) -> None: ...

class CpuTierLayout(_message.Message):
    __slots__ = ("kv_segment", "exchange_segment", "kv_bytes", "exchange_bytes", "dims")
    KV_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    kv_segment: str
    exchange_segment: str
    kv_bytes: int
    exchange_bytes: int
    dims: InitTierRequest
    def __init__(self, kv_segment: _Optional[str] = ..., exchange_segment: _Optional[str] = ..., kv_bytes: _Optional[int] = ..., exchange_bytes: _Optional[int] = ..., dims: _Optional[_Union[InitTierRequest, _Mapping]] = ...) -> None: ...

class AttachCpuTierResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BlockCopy(_message.Message):
    __slots__ = ("src", "dst")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    src: int
    dst: int
    def __init__(self, src: _Optional[int] = ..., dst: _Optional[int] = ...) -> None: ...

class ExecutorInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExecutorInfo(_message.Message):
    __slots__ = ("model", "device", "dtype", "num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim", "vocab_size", "max_position_embeddings", "free_device_memory_bytes", "weight_bytes", "cache_ready", "device_name")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_ATTENTION_HEADS_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_POSITION_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    FREE_DEVICE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    CACHE_READY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    model: str
    device: str
    dtype: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    free_device_memory_bytes: int
    weight_bytes: int
    cache_ready: bool
    device_name: str
    def __init__(self, model: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., num_layers: _Optional[int] = ..., hidden_size: _Optional[int] = ..., num_attention_heads: _Optional[int] = ..., num_kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ..., vocab_size: _Optional[int] = ..., max_position_embeddings: _Optional[int] = ..., free_device_memory_bytes: _Optional[int] = ..., weight_bytes: _Optional[int] = ..., cache_ready: _Optional[bool] = ..., device_name: _Optional[str] = ...) -> None: ...

class InitCacheRequest(_message.Message):
    __slots__ = ("num_blocks", "block_size", "max_blocks_per_seq")
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BLOCKS_PER_SEQ_FIELD_NUMBER: _ClassVar[int]
    num_blocks: int
    block_size: int
    max_blocks_per_seq: int
    def __init__(self, num_blocks: _Optional[int] = ..., block_size: _Optional[int] = ..., max_blocks_per_seq: _Optional[int] = ...) -> None: ...

class InitCacheResponse(_message.Message):
    __slots__ = ("cache_bytes",)
    CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    cache_bytes: int
    def __init__(self, cache_bytes: _Optional[int] = ...) -> None: ...

class SamplingSpec(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "seed", "logprobs", "top_logprobs", "banned_token_ids", "logit_bias", "repetition_penalty", "frequency_penalty", "presence_penalty")
    class LogitBiasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    BANNED_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    seed: int
    logprobs: bool
    top_logprobs: int
    banned_token_ids: _containers.RepeatedScalarFieldContainer[int]
    logit_bias: _containers.ScalarMap[int, float]
    repetition_penalty: float
    frequency_penalty: float
    presence_penalty: float
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., logprobs: _Optional[bool] = ..., top_logprobs: _Optional[int] = ..., banned_token_ids: _Optional[_Iterable[int]] = ..., logit_bias: _Optional[_Mapping[int, float]] = ..., repetition_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., presence_penalty: _Optional[float] = ...) -> None: ...

class StepLogprobs(_message.Message):
    __slots__ = ("logprob", "top_ids", "top_logprobs")
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    logprob: float
    top_ids: _containers.RepeatedScalarFieldContainer[int]
    top_logprobs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, logprob: _Optional[float] = ..., top_ids: _Optional[_Iterable[int]] = ..., top_logprobs: _Optional[_Iterable[float]] = ...) -> None: ...

class SeqStep(_message.Message):
    __slots__ = ("request_id", "token_ids", "start_pos", "block_table", "sampling", "tier", "output_token_ids", "prompt_token_ids", "table_offset")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    START_POS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_TABLE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TABLE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    start_pos: int
    block_table: _containers.RepeatedScalarFieldContainer[int]
    sampling: SamplingSpec
    tier: Tier
    output_token_ids: _containers.RepeatedScalarFieldContainer[int]
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    table_offset: int
    def __init__(self, request_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., start_pos: _Optional[int] = ..., block_table: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[SamplingSpec, _Mapping]] = ..., tier: _Optional[_Union[Tier, str]] = ..., output_token_ids: _Optional[_Iterable[int]] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., table_offset: _Optional[int] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("step_id", "seqs", "swap_out", "swap_in", "strategy", "pipeline_rows", "row_source", "continue_token", "continue_block")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUT_FIELD_NUMBER: _ClassVar[int]
    SWAP_IN_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_ROWS_FIELD_NUMBER: _ClassVar[int]
    ROW_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONTINUE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONTINUE_BLOCK_FIELD_NUMBER: _ClassVar[int]
    step_id: int
    seqs: _containers.RepeatedCompositeFieldContainer[SeqStep]
    swap_out: _containers.RepeatedCompositeFieldContainer[BlockCopy]
    swap_in: _containers.RepeatedCompositeFieldContainer[BlockCopy]
    strategy: Strategy
    pipeline_rows: int
    row_source: _containers.RepeatedScalarFieldContainer[int]
    continue_token: _containers.RepeatedScalarFieldContainer[int]
    continue_block: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, step_id: _Optional[int] = ..., seqs: _Optional[_Iterable[_Union[SeqStep, _Mapping]]] = ..., swap_out: _Optional[_Iterable[_Union[BlockCopy, _Mapping]]] = ..., swap_in: _Optional[_Iterable[_Union[BlockCopy, _Mapping]]] = ..., strategy: _Optional[_Union[Strategy, str]] = ..., pipeline_rows: _Optional[int] = ..., row_source: _Optional[_Iterable[int]] = ..., continue_token: _Optional[_Iterable[int]] = ..., continue_block: _Optional[_Iterable[int]] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("step_id", "next_tokens", "logprobs")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    step_id: int
    next_tokens: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedCompositeFieldContainer[StepLogprobs]
    def __init__(self, step_id: _Optional[int] = ..., next_tokens: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[_Union[StepLogprobs, _Mapping]]] = ...) -> None: ...
