// ApiError: a request the HTTP API refuses, with the status and OpenAI's error object fields
// (message, type, param, code) that clients such as the `openai` package read.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "core/error.h"

namespace lserve::server {

class ApiError : public Error {
 public:
  ApiError(int status, std::string message, std::string param = {}, std::string code = {})
      : Error(std::move(message)), status_(status), param_(std::move(param)), code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }

 private:
  int status_;
  std::string param_, code_;
};

inline ApiError bad_request(std::string message, std::string param = {}) {
  return ApiError(400, std::move(message), std::move(param));
}

// {"error": {"message", "type", "param", "code"}}, the shape OpenAI's API answers errors with.
inline nlohmann::json error_body(int status, const std::string& message, const std::string& param = {},
                                 const std::string& code = {}) {
  // An unknown model is a 404 of type invalid_request_error, as OpenAI answers it; an unknown path
  // a not_found_error.
  const char* type = status == 401                                ? "authentication_error"
                     : status == 404 && code != "model_not_found" ? "not_found_error"
                     : status == 503                              ? "service_unavailable"
                     : status >= 500                              ? "internal_error"
                                                                  : "invalid_request_error";
  nlohmann::json e = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) e["param"] = param;
  if (!code.empty()) e["code"] = code;
  return {{"error", e}};
}

}  // namespace lserve::server
