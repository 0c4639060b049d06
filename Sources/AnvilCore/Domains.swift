/// The op domain of Anvil's own ops (version 1): the fused and recognized ops the
/// optimizer writes, which the kernels run and the exporter writes as ONNX
/// functions; listed in docs/passes.md.
public let anvilDomain = "ai.anvil"
