import AnvilCore
import CONNX

/// Walks protobuf wire format without recursion, guided by protobuf-c's message
/// descriptors, to measure how deeply messages nest. protobuf-c decodes nested
/// messages recursively, so a hostile file with millions of nested subgraphs
/// would overflow the stack; this scan refuses such files first.
enum WireScan {
    /// Deepest message nesting allowed (an If inside a Loop inside ... costs about
    /// four levels per subgraph; real models stay far below this).
    static let maxMessageDepth = 400

    /// Throws when `bytes`, read as the message `root` describes, nest deeper than allowed.
    static func refuseDeepNesting(_ bytes: [UInt8], root: ProtobufCMessageDescriptor, file: String, message: String) throws {
        let depth = withUnsafePointer(to: root) { messageDepth(bytes, root: $0, limit: maxMessageDepth) }
        guard depth <= maxMessageDepth else {
            throw AnvilError.invalidModel(file: file, field: message, reason: "messages are nested more than \(maxMessageDepth) deep (subgraphs inside subgraphs); refusing a file built to exhaust the decoder")
        }
    }

    /// The deepest nesting of messages in `bytes` read as `root`, stopping early once
    /// it exceeds `limit`. Malformed input ends the scan; the decoder reports it.
    static func messageDepth(_ bytes: [UInt8], root: UnsafePointer<ProtobufCMessageDescriptor>, limit: Int) -> Int {
        var stack: [(end: Int, descriptor: UnsafePointer<ProtobufCMessageDescriptor>)] = [(bytes.count, root)]
        var position = 0
        var deepest = 1
        func varint() -> UInt64? {
            var result: UInt64 = 0, shift: UInt64 = 0
            while position < bytes.count, shift < 64 {
                let b = bytes[position]
                position += 1
                result |= UInt64(b & 0x7F) << shift
                if b & 0x80 == 0 { return result }
                shift += 7
            }
            return nil
        }
        while let top = stack.last {
            if position >= top.end {
                stack.removeLast()
                continue
            }
            guard let key = varint() else { return deepest }
            let field = UInt32(truncatingIfNeeded: key >> 3)
            switch key & 7 {
            case 0: guard varint() != nil else { return deepest }
            case 1: position += 8
            case 5: position += 4
            case 2:
                // A fixed-size field or varint may have run past the enclosing message's end.
                guard let length = varint(), position <= top.end, length <= UInt64(top.end - position) else { return deepest }
                let end = position + Int(length)
                if let sub = messageField(top.descriptor, field) {
                    stack.append((end, sub))
                    deepest = max(deepest, stack.count)
                    if deepest > limit { return deepest }
                } else {
                    position = end
                }
            default: return deepest
            }
        }
        return deepest
    }

    /// The descriptor of field `id` when it holds a message.
    static func messageField(_ d: UnsafePointer<ProtobufCMessageDescriptor>, _ id: UInt32) -> UnsafePointer<ProtobufCMessageDescriptor>? {
        let fields = d.pointee.fields!
        for i in 0..<Int(d.pointee.n_fields) where fields[i].id == id {
            guard fields[i].type == PROTOBUF_C_TYPE_MESSAGE, let sub = fields[i].descriptor else { return nil }
            return sub.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
        }
        return nil
    }
}
