/// Element types of tensors, numbered as ONNX's TensorProto.DataType.
public enum DataType: Int32, Sendable, CaseIterable, CustomStringConvertible {
    case float = 1
    case uint8 = 2
    case int8 = 3
    case uint16 = 4
    case int16 = 5
    case int32 = 6
    case int64 = 7
    case string = 8
    case bool = 9
    case float16 = 10
    case double = 11
    case uint32 = 12
    case uint64 = 13
    case bfloat16 = 16

    /// Size of one element in bytes (0 for strings, whose size varies).
    public var byteSize: Int {
        switch self {
        case .bool, .uint8, .int8: 1
        case .uint16, .int16, .float16, .bfloat16: 2
        case .float, .int32, .uint32: 4
        case .double, .int64, .uint64: 8
        case .string: 0
        }
    }

    /// True for float, double, float16 and bfloat16.
    public var isFloatingPoint: Bool {
        switch self {
        case .float, .double, .float16, .bfloat16: true
        default: false
        }
    }

    /// True for the signed and unsigned integer types (not bool).
    public var isInteger: Bool {
        switch self {
        case .uint8, .int8, .uint16, .int16, .int32, .int64, .uint32, .uint64: true
        default: false
        }
    }

    /// True for the unsigned integer types.
    public var isUnsigned: Bool {
        switch self {
        case .uint8, .uint16, .uint32, .uint64: true
        default: false
        }
    }

    /// The lower-case name ONNX tools print ("float", "int64", "bfloat16" ...).
    public var description: String {
        switch self {
        case .float: "float"
        case .uint8: "uint8"
        case .int8: "int8"
        case .uint16: "uint16"
        case .int16: "int16"
        case .int32: "int32"
        case .int64: "int64"
        case .string: "string"
        case .bool: "bool"
        case .float16: "float16"
        case .double: "double"
        case .uint32: "uint32"
        case .uint64: "uint64"
        case .bfloat16: "bfloat16"
        }
    }

    /// Name of an ONNX element-type code, including the codes Anvil does not support.
    public static func onnxName(code: Int32) -> String {
        if let type = DataType(rawValue: code) { return type.description }
        switch code {
        case 0: return "undefined"
        case 14: return "complex64"
        case 15: return "complex128"
        case 17: return "float8e4m3fn"
        case 18: return "float8e4m3fnuz"
        case 19: return "float8e5m2"
        case 20: return "float8e5m2fnuz"
        case 21: return "uint4"
        case 22: return "int4"
        case 23: return "float4e2m1"
        case 24: return "float8e8m0"
        case 25: return "uint2"
        case 26: return "int2"
        default: return "unknown(\(code))"
        }
    }
}

/// Conversions between Float and the 16-bit brain-float format, round to nearest even.
public enum BFloat16Bits {
    /// The bfloat16 bit pattern nearest to `value` (NaN stays NaN).
    public static func fromFloat(_ value: Float) -> UInt16 {
        let bits = value.bitPattern
        if value.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x40 }
        let rounding: UInt32 = 0x7FFF + ((bits >> 16) & 1)
        return UInt16(truncatingIfNeeded: (bits &+ rounding) >> 16)
    }

    /// The Float value of a bfloat16 bit pattern (exact).
    public static func toFloat(_ bits: UInt16) -> Float {
        Float(bitPattern: UInt32(bits) << 16)
    }
}
