import FoundationEssentials

extension Render {
    /// The credentials-URI answer: `{"Code":"Success","AccessKeyId",…,"Expiration"}`.
    public static func uriAnswer(_ c: Credentials) -> [UInt8] {
        var fields = [
            ("Code", "Success"), ("AccessKeyId", c.accessKeyId), ("AccessKeySecret", c.accessKeySecret),
        ]
        if let token = c.securityToken { fields.append(("SecurityToken", token)) }
        if let exp = c.expiration { fields.append(("Expiration", Timestamp.format(exp))) }
        let body = fields.map { "\(jsonString($0.0)):\(jsonString($0.1))" }.joined(separator: ",")
        return Array(("{" + body + "}\n").utf8)
    }
}
