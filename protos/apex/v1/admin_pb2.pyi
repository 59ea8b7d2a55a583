from apex.v1 import generation_pb2 as _generation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KvTier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KV_TIER_UNSPECIFIED: _ClassVar[KvTier]
    KV_TIER_GPU: _ClassVar[KvTier]
    KV_TIER_CPU: _ClassVar[KvTier]

class RequestState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REQUEST_STATE_UNSPECIFIED: _ClassVar[RequestState]
    REQUEST_STATE_WAITING: _ClassVar[RequestState]
    REQUEST_STATE_RUNNING: _ClassVar[RequestState]
    REQUEST_STATE_SWAPPED: _ClassVar[RequestState]
KV_TIER_UNSPECIFIED: KvTier
KV_TIER_GPU: KvTier
KV_TIER_CPU: KvTier
REQUEST_STATE_UNSPECIFIED: RequestState
REQUEST_STATE_WAITING: RequestState
REQUEST_STATE_RUNNING: RequestState
REQUEST_STATE_SWAPPED: RequestState

class ProfileRequest(_message.Message):
    __slots__ = ("quick",)
    QUICK_FIELD_NUMBER: _ClassVar[int]
    quick: bool
    def __init__(self, quick: _Optional[bool] = ...) -> None: ...

class ProfileProgress(_message.Message):
    __slots__ = ("done", "total", "stage", "profile_json", "path")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_JSON_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    done: int
    total: int
    stage: str
    profile_json: str
    path: str
    def __init__(self, done: _Optional[int] = ..., total: _Optional[int] = ..., stage: _Optional[str] = ..., profile_json: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class PolicyRequest(_message.Message):
    __slots__ = ("name", "tpot_slo_ms", "ttft_slo_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TPOT_SLO_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_SLO_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    tpot_slo_ms: float
    ttft_slo_s: float
    def __init__(self, name: _Optional[str] = ..., tpot_slo_ms: _Optional[float] = ..., ttft_slo_s: _Optional[float] = ...) -> None: ...

class PolicyInfo(_message.Message):
    __slots__ = ("name", "tpot_slo_ms", "profile", "description", "ttft_slo_s", "tpot_from_profile")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TPOT_SLO_MS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TTFT_SLO_S_FIELD_NUMBER: _ClassVar[int]
    TPOT_FROM_PROFILE_FIELD_NUMBER: _ClassVar[int]
    name: str
    tpot_slo_ms: float
    profile: str
    description: str
    ttft_slo_s: float
    tpot_from_profile: bool
    def __init__(self, name: _Optional[str] = ..., tpot_slo_ms: _Optional[float] = ..., profile: _Optional[str] = ..., description: _Optional[str] = ..., ttft_slo_s: _Optional[float] = ..., tpot_from_profile: _Optional[bool] = ...) -> None: ...

class TraceRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class IterationTrace(_message.Message):
    __slots__ = ("step_id", "strategy", "policy", "gpu_rows", "cpu_rows", "pipeline_rows", "prefill_tokens", "swap_out_blocks", "swap_in_blocks", "profile_predicted_ms", "predicted_ms", "measured_ms", "wall_time", "profile_uncalibrated_ms")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    GPU_ROWS_FIELD_NUMBER: _ClassVar[int]
    CPU_ROWS_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_ROWS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUT_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SWAP_IN_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_PREDICTED_MS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_MS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_MS_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    PROFILE_UNCALIBRATED_MS_FIELD_NUMBER: _ClassVar[int]
    step_id: int
    strategy: str
    policy: str
    gpu_rows: int
    cpu_rows: int
    pipeline_rows: int
    prefill_tokens: int
    swap_out_blocks: int
    swap_in_blocks: int
    profile_predicted_ms: float
    predicted_ms: float
    measured_ms: float
    wall_time: float
    profile_uncalibrated_ms: float
    def __init__(self, step_id: _Optional[int] = ..., strategy: _Optional[str] = ..., policy: _Optional[str] = ..., gpu_rows: _Optional[int] = ..., cpu_rows: _Optional[int] = ..., pipeline_rows: _Optional[int] = ..., prefill_tokens: _Optional[int] = ..., swap_out_blocks: _Optional[int] = ..., swap_in_blocks: _Optional[int] = ..., profile_predicted_ms: _Optional[float] = ..., predicted_ms: _Optional[float] = ..., measured_ms: _Optional[float] = ..., wall_time: _Optional[float] = ..., profile_uncalibrated_ms: _Optional[float] = ...) -> None: ...

class TraceResponse(_message.Message):
    __slots__ = ("iterations",)
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    iterations: _containers.RepeatedCompositeFieldContainer[IterationTrace]
    def __init__(self, iterations: _Optional[_Iterable[_Union[IterationTrace, _Mapping]]] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("in_flight",)
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    in_flight: int
    def __init__(self, in_flight: _Optional[int] = ...) -> None: ...

class MigrateRequest(_message.Message):
    __slots__ = ("request_id", "tier")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tier: KvTier
    def __init__(self, request_id: _Optional[str] = ..., tier: _Optional[_Union[KvTier, str]] = ...) -> None: ...

class MigrateResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TierUsage(_message.Message):
    __slots__ = ("tier", "blocks_total", "blocks_used", "block_size")
    TIER_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_USED_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    tier: str
    blocks_total: int
    blocks_used: int
    block_size: int
    def __init__(self, tier: _Optional[str] = ..., blocks_total: _Optional[int] = ..., blocks_used: _Optional[int] = ..., block_size: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("model", "num_waiting", "num_running", "tiers", "iterations", "generated_tokens", "preemptions", "tokens_per_s", "uptime_s", "strategy", "finished_requests", "rejected_requests", "max_queue", "placement", "swap_outs", "swap_ins", "num_swapped", "draining", "executor_recoveries", "predictor_mape", "predictor_samples", "policy", "profile_mape", "profile", "profile_calibration")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_WAITING_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    FINISHED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUTS_FIELD_NUMBER: _ClassVar[int]
    SWAP_INS_FIELD_NUMBER: _ClassVar[int]
    NUM_SWAPPED_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_RECOVERIES_FIELD_NUMBER: _ClassVar[int]
    PREDICTOR_MAPE_FIELD_NUMBER: _ClassVar[int]
    PREDICTOR_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PROFILE_MAPE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    num_waiting: int
    num_running: int
    tiers: _containers.RepeatedCompositeFieldContainer[TierUsage]
    iterations: int
    generated_tokens: int
    preemptions: int
    tokens_per_s: float
    uptime_s: float
    strategy: str
    finished_requests: int
    rejected_requests: int
    max_queue: int
    placement: str
    swap_outs: int
    swap_ins: int
    num_swapped: int
    draining: bool
    executor_recoveries: int
    predictor_mape: float
    predictor_samples: int
    policy: str
    profile_mape: float
    profile: str
    profile_calibration: float
    def __init__(self, model: _Optional[str] = ..., num_waiting: _Optional[int] = ..., num_running: _Optional[int] = ..., tiers: _Optional[_Iterable[_Union[TierUsage, _Mapping]]] = ..., iterations: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., preemptions: _Optional[int] = ..., tokens_per_s: _Optional[float] = ..., uptime_s: _Optional[float] = ..., strategy: _Optional[str] = ..., finished_requests: _Optional[int] = ..., rejected_requests: _Optional[int] = ..., max_queue: _Optional[int] = ..., placement: _Optional[str] = ..., swap_outs: _Optional[int] = ..., swap_ins: _Optional[int] = ..., num_swapped: _Optional[int] = ..., draining: _Optional[bool] = ..., executor_recoveries: _Optional[int] = ..., predictor_mape: _Optional[float] = ..., predictor_samples: _Optional[int] = ..., policy: _Optional[str] = ..., profile_mape: _Optional[float] = ..., profile: _Optional[str] = ..., profile_calibration: _Optional[float] = ...) -> None: ...

class ListRequestsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RequestInfo(_message.Message):
    __slots__ = ("request_id", "state", "prompt_tokens", "output_tokens", "max_tokens", "gpu_blocks", "age_s", "preemptions", "tier", "cpu_blocks", "migrations")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GPU_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    AGE_S_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    CPU_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    state: RequestState
    prompt_tokens: int
    output_tokens: int
    max_tokens: int
    gpu_blocks: int
    age_s: float
    preemptions: int
    tier: KvTier
    cpu_blocks: int
    migrations: int
    def __init__(self, request_id: _Optional[str] = ..., state: _Optional[_Union[RequestState, str]] = ..., prompt_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., max_tokens: _Optional[int] = ..., gpu_blocks: _Optional[int] = ..., age_s: _Optional[float] = ..., preemptions: _Optional[int] = ..., tier: _Optional[_Union[KvTier, str]] = ..., cpu_blocks: _Optional[int] = ..., migrations: _Optional[int] = ...) -> None: ...

class ListRequestsResponse(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RequestInfo]
    def __init__(self, requests: _Optional[_Iterable[_Union[RequestInfo, _Mapping]]] = ...) -> None: ...
