/// The op domain of Anvil's own ops (version 1): the fused and recognized ops the
/// optimizer writes, which the kernels run and the exporter writes as ONNX
/// functions; listed in docs/passes.md.
public let anvilDomain = "ai.anvil"

/// ONNX Runtime's contrib op domain (version 1), whose ops its quantizer and
/// optimizers write into models (`DynamicQuantizeLSTM`).
public let microsoftDomain = "com.microsoft"
