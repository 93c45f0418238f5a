// A minimal JSON reader for pocketdet's model metadata (`NAME.ncnn.json`): objects, arrays, strings
// (with \uXXXX escapes, written out as UTF-8), numbers, true/false/null. Errors throw std::runtime_error.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace pocketdet {

class Json {
public:
    enum class Type { Null, Bool, Number, String, Array, Object };

    static Json parse(const std::string& text);  // throws std::runtime_error("... at offset N")

    Type type() const { return type_; }
    bool is_object() const { return type_ == Type::Object; }
    bool has(const std::string& key) const;
    // Accessors throw std::runtime_error naming the key when the value is absent or of another type.
    const Json& at(const std::string& key) const;
    const Json& at(size_t index) const;
    size_t size() const;
    double number() const;
    bool boolean() const;
    const std::string& str() const;
    std::vector<std::string> strings() const;  // an array of strings
    std::vector<double> numbers() const;       // an array of numbers

private:
    friend class JsonParser;
    Type type_ = Type::Null;
    bool bool_ = false;
    double number_ = 0.0;
    std::string string_;
    std::vector<Json> array_;
    std::map<std::string, Json> object_;
};

}  // namespace pocketdet
